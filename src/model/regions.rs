//! The contact centre's regions (SPEC section 6): the host Twilio calls and the key in the path.

/// One region's webhook endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Region {
    pub name: &'static str,
    pub host: &'static str,
    pub key: &'static str,
}

impl Region {
    /// The URL a tenant sets as the SMS webhook of each Twilio number.
    pub fn webhook_url(&self) -> String {
        format!("https://{}/vendors/v1/twilio/{}/mo", self.host, self.key)
    }
}

/// Every region from the seed, in its order.
pub const REGIONS: &[Region] = &[
    Region {
        name: "us-east-1",
        host: "byosms.mypurecloud.com",
        key: "a906d2848ad146028e8805a8bbaa24d3",
    },
    Region {
        name: "us-west-2",
        host: "byosms.usw2.pure.cloud",
        key: "b1adfe3a944c428bbc65d953bb8629b2",
    },
    Region {
        name: "ca-central-1",
        host: "byosms.cac1.pure.cloud",
        key: "1190471d172842c283dc5376a92df73d",
    },
    Region {
        name: "sa-east-1",
        host: "byosms.sae1.pure.cloud",
        key: "44e8a8cd75f849b18ab6fc8bbad9a057",
    },
    Region {
        name: "eu-central-1",
        host: "byosms.mypurecloud.de",
        key: "3d904439dc3f4eceb2e574b43c8f5ac5",
    },
    Region {
        name: "eu-west-1",
        host: "byosms.mypurecloud.ie",
        key: "a123cbc6467b48ccbdccc3e03fd30f4d",
    },
    Region {
        name: "eu-west-2",
        host: "byosms.euw2.pure.cloud",
        key: "f5c59e8b3a1345739ebd4564a340e526",
    },
    Region {
        name: "eu-central-2",
        host: "byosms.euc2.pure.cloud",
        key: "FhcOBGsMEALrQfWsxH1LQy39tzI3F3qk",
    },
    Region {
        name: "me-central-1",
        host: "byosms.mec1.pure.cloud",
        key: "N1aXOj92NXNBA21KqdkZfA3kFjdmAM2B",
    },
    Region {
        name: "ap-northeast-3",
        host: "byosms.apne3.pure.cloud",
        key: "yXaIsznST36qG0qy7UAP4mWlsHDHh0E0",
    },
    Region {
        name: "ap-northeast-2",
        host: "byosms.apne2.pure.cloud",
        key: "2e58f741f7a547b49c15c64dfb305361",
    },
    Region {
        name: "ap-southeast-2",
        host: "byosms.mypurecloud.com.au",
        key: "97b4889e04514098a34715f0c216bf7b",
    },
    Region {
        name: "ap-northeast-1",
        host: "byosms.mypurecloud.jp",
        key: "b7c9a0818bc343379513f713247b56ce",
    },
    Region {
        name: "ap-south-1",
        host: "byosms.aps1.pure.cloud",
        key: "b462e102a5414620bc6f002bc561595d",
    },
];

/// The region with this name (e.g. `eu-west-1`).
pub fn by_name(name: &str) -> Option<&'static Region> {
    REGIONS.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourteen_unique_regions() {
        assert_eq!(REGIONS.len(), 14);
        let keys: std::collections::HashSet<_> = REGIONS.iter().map(|r| r.key).collect();
        assert_eq!(keys.len(), 14);
        assert_eq!(
            by_name("ap-northeast-1").unwrap().webhook_url(),
            "https://byosms.mypurecloud.jp/vendors/v1/twilio/b7c9a0818bc343379513f713247b56ce/mo"
        );
        assert!(by_name("mars-1").is_none());
    }
}
