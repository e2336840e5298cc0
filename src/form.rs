//! Form parsing: `application/x-www-form-urlencoded` bodies as Twilio posts them. Names and
//! values borrow from the body and are decoded (into an owned string) only when they
//! contain `+` or `%`, so the usual field is never copied.

use std::borrow::Cow;

/// Why a body is not a form; every variant answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("bad percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("field is not UTF-8 after decoding (at byte {0})")]
    NotUtf8(usize),
}

/// The decoded fields of one body, in the order they were sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Form<'a> {
    /// Parses a whole body; empty segments (`a=1&&b=2`) are skipped, `name` without `=` has an empty value.
    pub fn parse(body: &'a [u8]) -> Result<Form<'a>, FormError> {
        let mut pairs = Vec::with_capacity(32);
        let mut start = 0;
        for segment in body.split(|&b| b == b'&') {
            let seg_start = start;
            start += segment.len() + 1;
            if segment.is_empty() {
                continue;
            }
            let (name, value, value_at) = match segment.iter().position(|&b| b == b'=') {
                Some(eq) => (&segment[..eq], &segment[eq + 1..], seg_start + eq + 1),
                None => (
                    segment,
                    &segment[segment.len()..],
                    seg_start + segment.len(),
                ),
            };
            pairs.push((decode(name, seg_start)?, decode(value, value_at)?));
        }
        Ok(Form { pairs })
    }

    /// The first value of a field, the way Twilio's single-valued fields are read.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Every (name, value) pair, for signing.
    pub fn pairs(&self) -> &[(Cow<'a, str>, Cow<'a, str>)] {
        &self.pairs
    }
}

/// Decodes one name or value; borrows when there is nothing to decode.
fn decode(raw: &[u8], offset: usize) -> Result<Cow<'_, str>, FormError> {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|e| FormError::NotUtf8(offset + e.valid_up_to()));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = raw.get(i + 1).and_then(|&c| hex_val(c));
                let lo = raw.get(i + 2).and_then(|&c| hex_val(c));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(FormError::BadEscape(offset + i));
                };
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|e| FormError::NotUtf8(offset + e.utf8_error().valid_up_to()))
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(body: &str) -> Vec<(String, String)> {
        Form::parse(body.as_bytes())
            .unwrap()
            .pairs()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plain_fields_borrow() {
        let body = b"To=12345&Body=hi";
        let f = Form::parse(body).unwrap();
        assert!(matches!(f.pairs()[0].1, Cow::Borrowed(_)));
        assert_eq!(f.get("Body"), Some("hi"));
    }

    #[test]
    fn plus_and_escapes() {
        assert_eq!(
            pairs("From=%2B15551234567&Body=hello+world%21"),
            vec![
                ("From".into(), "+15551234567".into()),
                ("Body".into(), "hello world!".into())
            ]
        );
        assert_eq!(pairs("a=%2b%2B"), vec![("a".into(), "++".into())]);
    }

    #[test]
    fn bad_escapes_rejected() {
        assert_eq!(Form::parse(b"a=%zz"), Err(FormError::BadEscape(2)));
        assert_eq!(Form::parse(b"a=1&b=%4"), Err(FormError::BadEscape(6)));
        assert_eq!(Form::parse(b"a=%"), Err(FormError::BadEscape(2)));
        assert!(Form::parse(b"%g1=x").is_err());
    }

    #[test]
    fn empty_values_and_segments() {
        assert_eq!(
            pairs("a=&&b&c=="),
            vec![
                ("a".into(), "".into()),
                ("b".into(), "".into()),
                ("c".into(), "=".into())
            ]
        );
        assert_eq!(pairs(""), vec![]);
    }

    #[test]
    fn repeated_keys_kept_in_order() {
        let f = Form::parse(b"k=2&k=1").unwrap();
        assert_eq!(f.pairs().len(), 2);
        assert_eq!(f.get("k"), Some("2"));
    }

    #[test]
    fn utf8_decoded_and_checked() {
        assert_eq!(
            pairs("Body=%E3%81%93%F0%9F%98%80"),
            vec![("Body".into(), "こ😀".into())]
        );
        assert_eq!(pairs("Body=こ"), vec![("Body".into(), "こ".into())]);
        assert!(matches!(
            Form::parse(b"Body=%FF"),
            Err(FormError::NotUtf8(_))
        ));
        assert!(matches!(
            Form::parse(b"Body=\xff"),
            Err(FormError::NotUtf8(5))
        ));
    }
}
