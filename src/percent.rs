//! The one percent-codec: decoding form bodies (where `+` is a space), admin paths and
//! queries (where it is not), and encoding values for Twilio's REST API and for form
//! bodies. Pure, no allocation beyond the output buffer.

/// The value of one hex digit.
#[inline]
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `+` means a space (`application/x-www-form-urlencoded`) or itself (a URL path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plus {
    /// Form bodies and their query strings: `+` is a space.
    Space,
    /// Paths and RFC 3986 components: `+` stays `+`.
    Literal,
}

/// Decodes `%XX` escapes of `raw` into `out` (cleared first). `Err(i)`: the escape at byte
/// `i` of `raw` is malformed.
#[inline]
pub fn decode_into(raw: &[u8], plus: Plus, out: &mut Vec<u8>) -> Result<(), usize> {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' if plus == Plus::Space => out.push(b' '),
            b'%' => {
                let hi = raw.get(i + 1).and_then(|&c| hex_val(c));
                let lo = raw.get(i + 2).and_then(|&c| hex_val(c));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(i);
                };
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(())
}

/// Decodes a whole string; `None` if an escape is malformed or the result is not UTF-8.
pub fn decode(s: &str, plus: Plus) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    decode_into(s.as_bytes(), plus, &mut out).ok()?;
    String::from_utf8(out).ok()
}

/// Appends `s` with everything but RFC 3986's unreserved characters escaped (`%2B`): for
/// query values and path segments of REST calls.
pub fn encode_component(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            push_escape(b, out);
        }
    }
}

/// Appends `s` encoded as a form value the way Twilio sends one (`+` for a space, `*`
/// kept), for bodies built by tests and the load generator.
pub fn encode_form(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => push_escape(b, out),
        }
    }
}

fn push_escape(b: u8, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_with_and_without_plus() {
        assert_eq!(
            decode("%2B1%20a+b", Plus::Literal).as_deref(),
            Some("+1 a+b")
        );
        assert_eq!(decode("%2B1%20a+b", Plus::Space).as_deref(), Some("+1 a b"));
        assert_eq!(decode("%2", Plus::Literal), None);
        assert_eq!(decode("%ff", Plus::Literal), None, "not UTF-8");
        let mut out = Vec::new();
        assert_eq!(decode_into(b"ab%zz", Plus::Space, &mut out), Err(2));
        assert_eq!(decode_into(b"%4", Plus::Space, &mut out), Err(0));
    }

    #[test]
    fn encodes_components_and_forms() {
        let mut s = String::new();
        encode_component("+1 a~*é", &mut s);
        assert_eq!(s, "%2B1%20a~%2A%C3%A9");
        let mut f = String::new();
        encode_form("+1 a~*", &mut f);
        assert_eq!(f, "%2B1+a%7E*");
        assert_eq!(decode(&f, Plus::Space).as_deref(), Some("+1 a~*"));
    }
}
