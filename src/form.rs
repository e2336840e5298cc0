//! Form parsing: `application/x-www-form-urlencoded` bodies as Twilio posts them. Names and
//! values borrow from the body; those containing `+` or `%` are decoded into one shared
//! buffer. Pairs are kept sorted as Twilio signs them, so verification needs no sort.

/// Why a body is not a form; every variant answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("bad percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("field is not UTF-8 after decoding (at byte {0})")]
    NotUtf8(usize),
    #[error("body is larger than 4 GiB")]
    TooLarge,
}

/// Where a name or value lives: a slice of the body, or of the one buffer of decoded text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
    decoded: bool,
}

/// The decoded fields of one body, sorted by name then value (Twilio's signing order).
///
/// Fields that need no decoding borrow from the body; the others share one buffer, so a
/// parse costs two allocations however many fields are escaped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form<'a> {
    body: &'a str,
    decoded: String,
    pairs: Vec<(Span, Span)>,
}

impl<'a> Form<'a> {
    /// Parses a whole body; empty segments (`a=1&&b=2`) are skipped, `name` without `=` has an empty value.
    pub fn parse(body: &'a [u8]) -> Result<Form<'a>, FormError> {
        let mut form = Self::parse_in_order(body)?;
        let (body, decoded) = (form.body, form.decoded.as_str());
        let text_of = |s: &Span| resolve(body, decoded, *s);
        form.pairs.sort_unstable_by(|a, b| {
            (text_of(&a.0), text_of(&a.1)).cmp(&(text_of(&b.0), text_of(&b.1)))
        });
        Ok(form)
    }

    /// Whether some name appears more than once (its values may be signed several ways).
    pub fn has_repeated_names(&self) -> bool {
        self.pairs
            .windows(2)
            .any(|w| self.text(w[0].0) == self.text(w[1].0))
    }

    /// The pairs sorted by name with each name's values in the order they were sent (how
    /// `twilio-ruby` signs a repeated name); rebuilt from the body, for the rare retry.
    pub fn pairs_as_sent(&self) -> Vec<(String, String)> {
        let Ok(sent) = Self::parse_in_order(self.body.as_bytes()) else {
            return Vec::new();
        };
        let mut pairs: Vec<(String, String)> = sent
            .pairs
            .iter()
            .map(|(n, v)| (sent.text(*n).to_string(), sent.text(*v).to_string()))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
    }

    /// The fields in the order the body has them.
    fn parse_in_order(body: &'a [u8]) -> Result<Form<'a>, FormError> {
        if u32::try_from(body.len()).is_err() {
            return Err(FormError::TooLarge);
        }
        let text = std::str::from_utf8(body).map_err(|e| FormError::NotUtf8(e.valid_up_to()))?;
        let mut form = Form {
            body: text,
            decoded: String::new(),
            pairs: Vec::with_capacity(32),
        };
        let mut scratch = Vec::new();
        let mut start = 0;
        for segment in body.split(|&b| b == b'&') {
            let seg_start = start;
            start += segment.len() + 1;
            if segment.is_empty() {
                continue;
            }
            let eq = segment
                .iter()
                .position(|&b| b == b'=')
                .unwrap_or(segment.len());
            let value_start = (seg_start + eq + 1).min(seg_start + segment.len());
            let name = form.span(seg_start, seg_start + eq, &mut scratch)?;
            let value = form.span(value_start, seg_start + segment.len(), &mut scratch)?;
            form.pairs.push((name, value));
        }
        Ok(form)
    }

    /// Records `body[start..end]`, decoding it into the shared buffer if it holds `+` or `%`.
    fn span(&mut self, start: usize, end: usize, scratch: &mut Vec<u8>) -> Result<Span, FormError> {
        let raw = &self.body.as_bytes()[start..end];
        if !raw.iter().any(|&b| b == b'+' || b == b'%') {
            return Ok(Span {
                start: start as u32,
                end: end as u32,
                decoded: false,
            });
        }
        crate::percent::decode_into(raw, crate::percent::Plus::Space, scratch)
            .map_err(|at| FormError::BadEscape(start + at))?;
        let text = std::str::from_utf8(scratch)
            .map_err(|e| FormError::NotUtf8(start + e.valid_up_to()))?;
        let at = self.decoded.len();
        self.decoded.push_str(text);
        Ok(Span {
            start: at as u32,
            end: self.decoded.len() as u32,
            decoded: true,
        })
    }

    /// The value of a field (the smallest, should the name be repeated).
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.pairs.partition_point(|(n, _)| self.text(*n) < name);
        let (n, v) = self.pairs.get(i)?;
        (self.text(*n) == name).then(|| self.text(*v))
    }

    /// Every (name, value) pair, sorted by name then value: the order Twilio signs in.
    pub fn pairs(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.pairs
            .iter()
            .map(|(n, v)| (self.text(*n), self.text(*v)))
    }

    fn text(&self, span: Span) -> &str {
        resolve(self.body, &self.decoded, span)
    }
}

/// The text a span names.
fn resolve<'t>(body: &'t str, decoded: &'t str, span: Span) -> &'t str {
    let range = span.start as usize..span.end as usize;
    if span.decoded {
        &decoded[range]
    } else {
        &body[range]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(body: &str) -> Vec<(String, String)> {
        Form::parse(body.as_bytes())
            .unwrap()
            .pairs()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plain_fields_borrow_and_escaped_share_one_buffer() {
        let f = Form::parse(b"To=12345&Body=hi&From=%2B1&X=a+b").unwrap();
        assert_eq!(f.get("Body"), Some("hi"));
        assert!(f.pairs.iter().filter(|(_, v)| v.decoded).count() == 2);
        assert_eq!(f.decoded, "+1a b");
        assert_eq!(f.get("From"), Some("+1"));
        assert_eq!(f.get("X"), Some("a b"));
        assert_eq!(f.get("Nope"), None);
    }

    #[test]
    fn plus_and_escapes() {
        assert_eq!(
            pairs("From=%2B15551234567&Body=hello+world%21"),
            vec![
                ("Body".into(), "hello world!".into()),
                ("From".into(), "+15551234567".into()),
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
            pairs("c==&&b&a="),
            vec![
                ("a".into(), "".into()),
                ("b".into(), "".into()),
                ("c".into(), "=".into())
            ]
        );
        assert_eq!(pairs(""), vec![]);
    }

    #[test]
    fn repeated_keys_sorted_by_value() {
        let f = Form::parse(b"k=2&a=0&k=1").unwrap();
        assert_eq!(f.pairs().len(), 3);
        assert_eq!(f.get("k"), Some("1"));
        assert_eq!(
            pairs("k=2&a=0&k=1")[1..],
            [("k".into(), "1".into()), ("k".into(), "2".into())]
        );
    }

    #[test]
    fn sorted_by_bytes_not_case() {
        let names: Vec<String> = pairs("b=1&B=2&a=3&AccountSid=4")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["AccountSid", "B", "a", "b"]);
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
            Err(FormError::NotUtf8(5))
        ));
        assert!(matches!(
            Form::parse(b"Body=\xff"),
            Err(FormError::NotUtf8(5))
        ));
    }
}
