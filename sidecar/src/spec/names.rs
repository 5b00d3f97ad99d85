//! The naming rules a spec's values must follow: Kubernetes' DNS-1123 names,
//! zfs dataset names, environment variable names.

/// DNS-1123 label: what Kubernetes accepts as a volume name.
pub fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("use only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

/// DNS-1123 subdomain: what Kubernetes accepts as a Secret name.
pub fn check_dns_subdomain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("it must be 1 to 253 characters");
    }
    for part in name.split('.') {
        check_dns_label(part)?;
    }
    Ok(())
}

pub(super) fn check_dataset(ds: &str) -> Result<(), &'static str> {
    if ds.starts_with('/') || ds.ends_with('/') || ds.contains("//") {
        return Err("write it as pool/path/name, with no leading or trailing '/'");
    }
    if ds.contains('@') || ds.contains('#') {
        return Err("snapshots and bookmarks cannot be mounted read-write; name a filesystem");
    }
    if !ds.chars().all(|c| c.is_ascii_alphanumeric() || "/_-.:".contains(c)) {
        return Err("use only letters, digits and _ - . : /");
    }
    Ok(())
}

pub(super) fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
