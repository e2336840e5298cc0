//! Placeholder while the signature module is written.
/// Parsed `server.public_url`.
pub struct PublicUrl;
impl PublicUrl {
    /// Parses.
    pub fn parse(_s: &str) -> Result<Self, String> {
        Ok(PublicUrl)
    }
}
