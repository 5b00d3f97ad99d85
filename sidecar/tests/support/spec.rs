//! Volume specs as the user writes them (YAML), built from test values. Strings are
//! written as JSON-quoted scalars, which YAML reads verbatim (`{mountpoint}` included).

use std::fmt::Write as _;
use std::path::Path;

/// JSON/YAML double-quoted string.
pub fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string to json")
}

#[derive(Debug, Clone)]
pub struct FuseVolume {
    pub name: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub secret_dir: Option<String>,
    pub options: Vec<String>,
}

impl FuseVolume {
    pub fn new(name: &str, command: &[&str]) -> FuseVolume {
        FuseVolume {
            name: name.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            secret_dir: None,
            options: Vec::new(),
        }
    }

    /// `options:` (for type fuse: the flags of the bind, e.g. `ro`).
    pub fn options(mut self, options: &[&str]) -> Self {
        self.options = options.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn secret_dir(mut self, dir: &Path) -> Self {
        self.secret_dir = Some(dir.display().to_string());
        self
    }

    fn write_yaml(&self, out: &mut String) {
        let cmd: Vec<String> = self.command.iter().map(|s| q(s)).collect();
        writeln!(out, "- name: {}", q(&self.name)).unwrap();
        writeln!(out, "  type: fuse").unwrap();
        writeln!(out, "  command: [{}]", cmd.join(", ")).unwrap();
        if !self.options.is_empty() {
            let options: Vec<String> = self.options.iter().map(|s| q(s)).collect();
            writeln!(out, "  options: [{}]", options.join(", ")).unwrap();
        }
        if !self.env.is_empty() {
            writeln!(out, "  env:").unwrap();
            for (k, v) in &self.env {
                writeln!(out, "    {}: {}", q(k), q(v)).unwrap();
            }
        }
        if let Some(d) = &self.secret_dir {
            writeln!(out, "  secretDir: {}", q(d)).unwrap();
        }
    }
}

/// `bindfs -f SRC {mountpoint}`: a foreground bindfs of `src`.
pub fn bindfs(name: &str, src: &Path) -> FuseVolume {
    FuseVolume::new(name, &["bindfs", "-f", &src.display().to_string(), "{mountpoint}"])
}

/// s3fs in the foreground against a local S3 endpoint; credentials come from the
/// environment (`AWSACCESSKEYID`, `AWSSECRETACCESSKEY`), i.e. from `secretDir`.
pub fn s3fs(name: &str, bucket: &str, endpoint: &str, secret_dir: &Path) -> FuseVolume {
    let url = format!("url={endpoint}");
    FuseVolume::new(
        name,
        &[
            "s3fs",
            bucket,
            "{mountpoint}",
            "-f",
            "-o",
            &url,
            "-o",
            "use_path_request_style",
            "-o",
            "endpoint=us-east-1",
            // Each read goes to the bucket: a test reading back sees the bucket, not a cache.
            "-o",
            "stat_cache_expire=1",
        ],
    )
    .secret_dir(secret_dir)
}

/// A whole spec file: `volumes: [...]`.
pub fn spec(volumes: &[FuseVolume]) -> String {
    let mut out = String::from("volumes:\n");
    if volumes.is_empty() {
        return "volumes: []\n".into();
    }
    for v in volumes {
        v.write_yaml(&mut out);
    }
    out
}
