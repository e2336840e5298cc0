//! Twilio request signatures: base64(HMAC-SHA1(Auth Token, URL + sorted name/value pairs)),
//! compared in constant time. Where Twilio's own libraries disagree (tests/fixtures/
//! twilio_signature_vectors.json), what a real request can carry is accepted: the URL with
//! the scheme's default port added or any port removed, credentials kept in it, a query
//! differing only in `'` / `%27`; a repeated name's values sorted (every pair), distinct,
//! or as sent. The main forms are tried first, so a valid request pays nothing extra.

use crate::form::Form;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::hmac;

/// Why a configured or given URL cannot be signed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL must start with http:// or https://")]
    Scheme,
    #[error("URL has no host")]
    NoHost,
    #[error("URL port is not a number from 1 to 65535")]
    Port,
    #[error("public_url must not carry a path, query or fragment; it is scheme://host[:port]")]
    HasPath,
}

/// `server.public_url` split into the base URLs a signature may have been computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// As configured first, then the other default-port form if the port is the default.
    bases: Vec<String>,
}

impl PublicUrl {
    /// Parses `scheme://host[:port]` (a trailing `/` is tolerated).
    pub fn parse(s: &str) -> Result<PublicUrl, UrlError> {
        let s = s.strip_suffix('/').unwrap_or(s);
        let parts = split_url(s)?;
        if !parts.rest.is_empty() {
            return Err(UrlError::HasPath);
        }
        Ok(PublicUrl {
            bases: parts.variants(""),
        })
    }

    /// The base URLs to try, in order.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }
}

struct UrlParts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
    rest: &'a str,
}

impl UrlParts<'_> {
    fn default_port(&self) -> u16 {
        if self.scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        }
    }

    /// The URL as written first, then its twin with the port removed (whatever it is: the
    /// libraries accept that) or, without one, with the default port added.
    fn variants(&self, rest: &str) -> Vec<String> {
        let (scheme, host, default) = (self.scheme, self.host, self.default_port());
        match self.port {
            Some(p) => vec![
                format!("{scheme}://{host}:{p}{rest}"),
                format!("{scheme}://{host}{rest}"),
            ],
            None => vec![
                format!("{scheme}://{host}{rest}"),
                format!("{scheme}://{host}:{default}{rest}"),
            ],
        }
    }
}

fn split_url(s: &str) -> Result<UrlParts<'_>, UrlError> {
    // The scheme's case is kept as given: it is part of what was signed (C# keeps it).
    let lower = |n: usize| s.get(..n).map(str::to_ascii_lowercase);
    let (scheme, after) = if lower(8).as_deref() == Some("https://") {
        (&s[..5], &s[8..])
    } else if lower(7).as_deref() == Some("http://") {
        (&s[..4], &s[7..])
    } else {
        return Err(UrlError::Scheme);
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    // `user:password@` stays part of what is signed; the port comes after it.
    let at = authority.rfind('@').map_or(0, |i| i + 1);
    let (userinfo, hostport) = authority.split_at(at);
    let (host_len, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            let port: u16 = p.parse().map_err(|_| UrlError::Port)?;
            if port == 0 {
                return Err(UrlError::Port);
            }
            (h.len(), Some(port))
        }
        _ => (hostport.len(), None),
    };
    if host_len == 0 {
        return Err(UrlError::NoHost);
    }
    let host = &authority[..userinfo.len() + host_len];
    Ok(UrlParts {
        scheme,
        host,
        port,
        rest,
    })
}

/// Every form of a full URL a Twilio library would accept: as given, with the port removed
/// or the default one added; then, if the query has `'` or `%27`, each with the other
/// spelling (Node's validator normalises the URL before signing).
pub fn url_variants(url: &str) -> Result<Vec<String>, UrlError> {
    let parts = split_url(url)?;
    let mut out = parts.variants(parts.rest);
    if let Some(q) = parts.rest.find('?') {
        let (path, query) = parts.rest.split_at(q);
        for other in [query.replace('\'', "%27"), query.replace("%27", "'")] {
            if other != query {
                out.extend(parts.variants(&format!("{path}{other}")));
            }
        }
    }
    Ok(out)
}

/// For a JSON body (not used by messaging webhooks): whether the URL's `bodySHA256` query
/// parameter is the hex SHA-256 of the body; the signature then covers the URL alone.
pub fn body_sha256_matches(url: &str, body: &[u8]) -> bool {
    let hex = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
    url.split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .any(|p| p.strip_prefix("bodySHA256=") == Some(hex.as_str()))
        })
        .unwrap_or(false)
}

/// The exact string Twilio signs, for operators comparing with Twilio's console.
pub fn signed_string(url: &str, form: &Form<'_>) -> String {
    let mut s = String::from(url);
    for (n, v) in form.pairs() {
        s.push_str(n);
        s.push_str(v);
    }
    s
}

/// HMAC-SHA1 tag over the URL (prefix + suffix) and the pairs (kept sorted by `Form`), without building the string.
fn tag(key: &hmac::Key, url: &str, suffix: &str, form: &Form<'_>) -> hmac::Tag {
    tag_of(key, url, suffix, form.pairs())
}

fn tag_of<'p>(
    key: &hmac::Key,
    url: &str,
    suffix: &str,
    pairs: impl Iterator<Item = (&'p str, &'p str)>,
) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(url.as_bytes());
    ctx.update(suffix.as_bytes());
    for (n, v) in pairs {
        ctx.update(n.as_bytes());
        ctx.update(v.as_bytes());
    }
    ctx.sign()
}

/// The other ways the libraries concatenate a repeated name: each identical pair once
/// (Python, Node, PHP), and the values in the order sent (Ruby).
fn repeat_orderings(form: &Form<'_>) -> [Vec<(String, String)>; 2] {
    let mut distinct: Vec<(String, String)> = Vec::with_capacity(form.pairs().len());
    for (n, v) in form.pairs() {
        if distinct.last().map_or(true, |(ln, lv)| ln != n || lv != v) {
            distinct.push((n.to_string(), v.to_string()));
        }
    }
    [distinct, form.pairs_as_sent()]
}

/// What `X-Twilio-Webhooks-Signature-Settings` names (`key=<id>,algorithm=HMAC_SHA256`):
/// parameters in any order, spaces around them ignored, unknown ones skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SignatureSettings<'a> {
    pub key: Option<&'a str>,
    pub algorithm: Option<&'a str>,
}

impl<'a> SignatureSettings<'a> {
    /// Parses the header's value.
    pub fn parse(header: &'a str) -> SignatureSettings<'a> {
        let mut out = SignatureSettings::default();
        for part in header.split([',', ';']) {
            let Some((name, value)) = part.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "key" => out.key = Some(value),
                "algorithm" => out.algorithm = Some(value),
                _ => {}
            }
        }
        out
    }

    /// Whether the algorithm is the one SharedKey signing uses (HMAC-SHA256).
    pub fn is_hmac_sha256(&self) -> bool {
        self.algorithm.is_some_and(|a| {
            a.eq_ignore_ascii_case("HMAC_SHA256") || a.eq_ignore_ascii_case("HMAC-SHA256")
        })
    }
}

/// The HMAC-SHA256 key of a Twilio SharedKey.
pub fn shared_key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// The `X-Twilio-Signature` value for `key` (of either algorithm) over this URL and form.
pub fn sign_with(key: &hmac::Key, url: &str, form: &Form<'_>) -> String {
    B64.encode(tag(key, url, "", form).as_ref())
}

/// The `X-Twilio-Signature` Twilio sends when a SharedKey signs (HMAC-SHA256).
pub fn compute_shared(url: &str, form: &Form<'_>, secret: &[u8]) -> String {
    B64.encode(tag(&shared_key(secret), url, "", form).as_ref())
}

/// The HMAC key for an Auth Token.
pub fn key(token: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, token)
}

/// The `X-Twilio-Signature` value Twilio would send for this URL, form and token.
pub fn compute(url: &str, form: &Form<'_>, token: &[u8]) -> String {
    B64.encode(tag(&key(token), url, "", form).as_ref())
}

/// Checks a signature over each `prefix + suffix` URL and every key; returns the index of the prefix that matched.
///
/// The webhook passes the public URL's base forms as prefixes and the request's path and
/// query as suffix, so no URL string is built per request. The MAC is compared in constant time.
pub fn verify(
    prefixes: &[String],
    suffix: &str,
    form: &Form<'_>,
    keys: &[hmac::Key],
    signature: &[u8],
) -> Option<usize> {
    // 20 bytes for HMAC-SHA1 (Auth Tokens), 32 for HMAC-SHA256 (SharedKeys); a tag of
    // another length never compares equal.
    let mut sig = [0u8; 32];
    let n = B64.decode_slice(signature, &mut sig).ok()?;
    for (i, url) in prefixes.iter().enumerate() {
        for k in keys {
            let expected = tag(k, url, suffix, form);
            if constant_time_eq(expected.as_ref(), &sig[..n]) {
                return Some(i);
            }
        }
    }
    // Only a form with a repeated name gets here twice over: at most 2 more orderings
    // per URL and key, each skipped when it equals the main one.
    if !form.has_repeated_names() {
        return None;
    }
    let main: Vec<(&str, &str)> = form.pairs().collect();
    for ordering in repeat_orderings(form) {
        if ordering
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .eq(main.iter().copied())
        {
            continue;
        }
        for (i, url) in prefixes.iter().enumerate() {
            for k in keys {
                let pairs = ordering.iter().map(|(n, v)| (n.as_str(), v.as_str()));
                let expected = tag_of(k, url, suffix, pairs);
                if constant_time_eq(expected.as_ref(), &sig[..n]) {
                    return Some(i);
                }
            }
        }
    }
    None
}

/// Equality whose time depends only on the lengths, for comparing secrets and MACs.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const DOC_BODY: &[u8] =
        b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
    const DOC_SIG: &str = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";

    #[test]
    fn twilio_documentation_example() {
        let form = Form::parse(DOC_BODY).unwrap();
        assert_eq!(compute(DOC_URL, &form, b"12345"), DOC_SIG);
        let urls = url_variants(DOC_URL).unwrap();
        assert_eq!(
            verify(&urls, "", &form, &[key(b"12345")], DOC_SIG.as_bytes()),
            Some(0)
        );
    }

    #[test]
    fn parameter_order_does_not_matter() {
        let shuffled = b"To=%2B18005551212&Digits=1234&CallSid=CA1234567890ABCDE&From=%2B12349013030&Caller=%2B12349013030";
        let form = Form::parse(shuffled).unwrap();
        assert_eq!(compute(DOC_URL, &form, b"12345"), DOC_SIG);
    }

    /// A second, independent computation: build the string by hand, HMAC it with ring's one-shot API.
    #[test]
    fn matches_independent_computation() {
        let body = b"Body=Hi+there%21&To=%2B15005550006&From=%2B14155551212&AccountSid=AC00&MessageSid=SM1&NumMedia=0";
        let url =
            "https://byosms.mypurecloud.jp/vendors/v1/twilio/b7c9a0818bc343379513f713247b56ce/mo";
        let expected_string = format!(
            "{url}AccountSidAC00BodyHi there!From+14155551212MessageSidSM1NumMedia0To+15005550006"
        );
        let form = Form::parse(body).unwrap();
        assert_eq!(signed_string(url, &form), expected_string);
        let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"secret-token");
        let expected = B64.encode(hmac::sign(&k, expected_string.as_bytes()).as_ref());
        assert_eq!(compute(url, &form, b"secret-token"), expected);
    }

    #[test]
    fn repeated_names_sorted_by_value() {
        let form = Form::parse(b"b=2&a=9&b=1").unwrap();
        assert_eq!(signed_string("u", &form), "ua9b1b2");
    }

    /// The string each library signs for a repeated name, computed by hand.
    fn sig_over(url: &str, concatenated: &str, token: &[u8]) -> String {
        let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, token);
        B64.encode(hmac::sign(&k, format!("{url}{concatenated}").as_bytes()).as_ref())
    }

    #[test]
    fn repeated_pairs_are_accepted_as_each_library_signs_them() {
        let url = "https://h/x";
        let urls = url_variants(url).unwrap();
        let keys = [key(b"t")];
        // An identical pair twice: Python, Node, PHP sign it once; we sign every pair.
        let twice = Form::parse(b"Tag=a&Tag=a&To=1").unwrap();
        for s in [
            sig_over(url, "TagaTo1", b"t"),
            sig_over(url, "TagaTagaTo1", b"t"),
        ] {
            assert!(
                verify(&urls, "", &twice, &keys, s.as_bytes()).is_some(),
                "{s}"
            );
        }
        // Values sent out of order: sorted (Python, Node, PHP) or as sent (Ruby).
        let unsorted = Form::parse(b"b=2&a=0&b=1").unwrap();
        for s in [sig_over(url, "a0b1b2", b"t"), sig_over(url, "a0b2b1", b"t")] {
            assert!(
                verify(&urls, "", &unsorted, &keys, s.as_bytes()).is_some(),
                "{s}"
            );
        }
        // Never an ordering no library uses, nor a different value.
        for s in [sig_over(url, "b2b1a0", b"t"), sig_over(url, "a0b1", b"t")] {
            assert_eq!(
                verify(&urls, "", &unsorted, &keys, s.as_bytes()),
                None,
                "{s}"
            );
        }
        assert!(!Form::parse(b"a=1&b=2").unwrap().has_repeated_names());
    }

    #[test]
    fn shared_key_signatures_and_the_settings_header() {
        let form = Form::parse(DOC_BODY).unwrap();
        let urls = url_variants(DOC_URL).unwrap();
        let sha256 = compute_shared(DOC_URL, &form, b"shared-secret");
        // Independent: HMAC-SHA256 of the same string Twilio signs with SHA-1.
        let k = hmac::Key::new(hmac::HMAC_SHA256, b"shared-secret");
        let by_hand = B64.encode(hmac::sign(&k, signed_string(DOC_URL, &form).as_bytes()).as_ref());
        assert_eq!(sha256, by_hand);
        let shared = [shared_key(b"shared-secret")];
        assert_eq!(
            verify(&urls, "", &form, &shared, sha256.as_bytes()),
            Some(0)
        );
        // Each scheme's signature fails under the other's key.
        assert_eq!(
            verify(
                &urls,
                "",
                &form,
                &[key(b"shared-secret")],
                sha256.as_bytes()
            ),
            None
        );
        assert_eq!(verify(&urls, "", &form, &shared, DOC_SIG.as_bytes()), None);
        let s = SignatureSettings::parse(" algorithm = HMAC_SHA256 , key=KS123, extra=1");
        assert_eq!((s.key, s.is_hmac_sha256()), (Some("KS123"), true));
        let s = SignatureSettings::parse("key=KS1,algorithm=HMAC_SHA512");
        assert!(!s.is_hmac_sha256());
        assert_eq!(SignatureSettings::parse("nonsense").key, None);
    }

    #[test]
    fn credentials_and_quotes_in_the_url() {
        let form = Form::parse(DOC_BODY).unwrap();
        let with_user = "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2";
        let s = compute(with_user, &form, b"12345");
        let urls = url_variants(with_user).unwrap();
        assert_eq!(
            verify(&urls, "", &form, &[key(b"12345")], s.as_bytes()),
            Some(0)
        );
        let urls = url_variants("https://h/x?q=it's").unwrap();
        assert!(
            urls.contains(&"https://h/x?q=it%27s".to_string()),
            "{urls:?}"
        );
        assert_eq!(
            url_variants("HTTP://H:80/x").unwrap(),
            vec!["HTTP://H:80/x", "HTTP://H/x"],
            "case kept"
        );
    }

    #[test]
    fn default_port_variants_accepted() {
        let form = Form::parse(DOC_BODY).unwrap();
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let sig_with_port = compute(with_port, &form, b"12345");
        let urls = url_variants(DOC_URL).unwrap();
        assert_eq!(urls[1], with_port);
        assert_eq!(
            verify(&urls, "", &form, &[key(b"12345")], sig_with_port.as_bytes()),
            Some(1)
        );
        let urls = url_variants(with_port).unwrap();
        assert_eq!(
            verify(&urls, "", &form, &[key(b"12345")], DOC_SIG.as_bytes()),
            Some(1)
        );
        assert_eq!(
            url_variants("http://h:8080/x").unwrap(),
            vec!["http://h:8080/x", "http://h/x"]
        );
        assert_eq!(
            url_variants("https://u:p@h/x").unwrap(),
            vec!["https://u:p@h/x", "https://u:p@h:443/x"]
        );
    }

    #[test]
    fn wrong_inputs_fail() {
        let form = Form::parse(DOC_BODY).unwrap();
        let urls = url_variants(DOC_URL).unwrap();
        assert_eq!(
            verify(&urls, "", &form, &[key(b"54321")], DOC_SIG.as_bytes()),
            None
        );
        assert_eq!(
            verify(&urls, "", &form, &[key(b"12345")], b"not base64!"),
            None
        );
        assert_eq!(verify(&urls, "", &form, &[key(b"12345")], b""), None);
        let tampered = Form::parse(b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1235&From=%2B12349013030&To=%2B18005551212").unwrap();
        assert_eq!(
            verify(&urls, "", &tampered, &[key(b"12345")], DOC_SIG.as_bytes()),
            None
        );
        let other_url = url_variants("https://mycompany.com/myapp.php?foo=1&bar=3").unwrap();
        assert_eq!(
            verify(&other_url, "", &form, &[key(b"12345")], DOC_SIG.as_bytes()),
            None
        );
    }

    #[test]
    fn any_of_several_keys() {
        let form = Form::parse(DOC_BODY).unwrap();
        let urls = url_variants(DOC_URL).unwrap();
        assert!(verify(
            &urls,
            "",
            &form,
            &[key(b"old"), key(b"12345")],
            DOC_SIG.as_bytes()
        )
        .is_some());
    }

    #[test]
    fn public_url_parsing() {
        assert_eq!(
            PublicUrl::parse("https://sms.example.com/")
                .unwrap()
                .bases(),
            ["https://sms.example.com", "https://sms.example.com:443"]
        );
        assert_eq!(
            PublicUrl::parse("http://127.0.0.1:8080").unwrap().bases(),
            ["http://127.0.0.1:8080", "http://127.0.0.1"]
        );
        assert_eq!(PublicUrl::parse("ftp://x"), Err(UrlError::Scheme));
        assert_eq!(PublicUrl::parse("https://x/path"), Err(UrlError::HasPath));
        assert_eq!(PublicUrl::parse("https://x:99999"), Err(UrlError::Port));
        assert_eq!(PublicUrl::parse("https://:443"), Err(UrlError::NoHost));
    }
}
