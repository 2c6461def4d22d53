//! The `drpo:strategy` contract's name and version. The version is read from
//! `wit/strategy.wit` when this crate is compiled, so it is written in one place, the WIT file,
//! and the host and the kit (which both build on this crate) state the same one.

/// The WIT package, as it appears in component import names.
pub const WIT_PACKAGE: &str = "drpo:strategy";

/// The version of [`WIT_PACKAGE`] in `wit/strategy.wit`.
pub const WIT_VERSION: &str = package_version(include_str!("../../../wit/strategy.wit"));

/// The version in a WIT file's `package drpo:strategy@VERSION;` line.
const fn package_version(wit: &str) -> &str {
    let bytes = wit.as_bytes();
    let prefix = b"package drpo:strategy@";
    let mut at = 0;
    while at + prefix.len() <= bytes.len() {
        let mut matched = 0;
        while matched < prefix.len() && bytes[at + matched] == prefix[matched] {
            matched += 1;
        }
        if matched == prefix.len() {
            let (_, rest) = bytes.split_at(at + matched);
            let mut end = 0;
            while end < rest.len() && rest[end] != b';' {
                end += 1;
            }
            let (version, _) = rest.split_at(end);
            return match std::str::from_utf8(version) {
                Ok(version) => version,
                Err(_) => panic!("the WIT package version is not UTF-8"),
            };
        }
        at += 1;
    }
    panic!("wit/strategy.wit declares no `package drpo:strategy@VERSION;`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_one_the_wit_file_declares() {
        assert_eq!(
            package_version("/// docs\npackage drpo:strategy@2.3.4;\n\ninterface x {}"),
            "2.3.4"
        );
        let parts: Vec<&str> = WIT_VERSION.split('.').collect();
        assert_eq!(parts.len(), 3, "{WIT_VERSION}");
        assert!(
            parts.iter().all(|p| p.parse::<u32>().is_ok()),
            "{WIT_VERSION}"
        );
    }
}
