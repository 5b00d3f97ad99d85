//! A local S3 server (moto's `moto_server`) for s3fs volumes, and a boto3 client that
//! reads what really landed in the bucket.
//!
//! `moto_server` is looked up in `<repo>/.venv/bin`, then on PATH (`tests/setup.sh`
//! creates that venv from `tests/requirements.txt`). Absent, the test fails and says
//! how to install it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http, POLL};

pub struct Moto {
    child: Child,
    port: u16,
    python: PathBuf,
    dir: tempfile::TempDir,
}

const BOTO: &str = r#"
import sys, boto3, botocore
op, endpoint = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="harness-client", aws_secret_access_key="harness-client")
if op == "create":
    s3.create_bucket(Bucket=sys.argv[3])
elif op == "get":
    try:
        body = s3.get_object(Bucket=sys.argv[3], Key=sys.argv[4])["Body"].read()
    except s3.exceptions.NoSuchKey:
        sys.exit(3)
    sys.stdout.buffer.write(body)
elif op == "put":
    s3.put_object(Bucket=sys.argv[3], Key=sys.argv[4], Body=sys.stdin.buffer.read())
elif op == "keys":
    for o in s3.list_objects_v2(Bucket=sys.argv[3]).get("Contents", []):
        print(o["Key"])
"#;

/// Where `moto_server` is: `<repo>/.venv/bin`, else PATH.
pub fn moto_server_path() -> PathBuf {
    super::common::tool("moto_server")
}

impl Moto {
    pub fn start() -> Moto {
        let server = moto_server_path();
        let bin = server.parent().expect("moto_server has a directory");
        let python = ["python3", "python"]
            .iter()
            .map(|n| bin.join(n))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no python next to {} (boto3 needs the venv's python)", server.display()));
        let dir = tempfile::Builder::new().prefix("sidemount-moto-").tempdir().expect("tempdir");
        let log = fs::File::create(dir.path().join("moto.log")).expect("moto log");
        let port = free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Own process group: Drop ends moto and anything it forked, and only that.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", server.display()));
        let mut moto = Moto { child, port, python, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http::get(moto.addr(), "/", Duration::from_secs(2)) {
                if r.status == 200 {
                    break;
                }
            }
            if let Ok(Some(st)) = moto.child.try_wait() {
                panic!("moto_server exited ({st}) before answering:\n{}", moto.log());
            }
            assert!(Instant::now() < deadline, "moto_server did not answer on port {port} in 60 s:\n{}", moto.log());
            std::thread::sleep(POLL);
        }
        moto
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    fn boto(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        let mut cmd = Command::new(&self.python);
        cmd.arg("-c").arg(BOTO).args(args).env_remove("AWS_PROFILE").env("AWS_EC2_METADATA_DISABLED", "true");
        let out = super::run_with_timeout(&mut cmd, stdin, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("boto3 {args:?}: {e}"));
        out
    }

    pub fn create_bucket(&self, bucket: &str) {
        let out = self.boto(&["create", &self.endpoint(), bucket], None);
        assert!(out.status.success(), "create bucket {bucket}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        let out = self.boto(&["put", &self.endpoint(), bucket, key], Some(body));
        assert!(out.status.success(), "put {bucket}/{key}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The object's bytes, or None if the bucket has no such key.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let out = self.boto(&["get", &self.endpoint(), bucket, key], None);
        match out.status.code() {
            Some(0) => Some(out.stdout),
            Some(3) => None,
            _ => panic!("get {bucket}/{key}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self.boto(&["keys", &self.endpoint(), bucket], None);
        assert!(out.status.success(), "list {bucket}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: plain kill(2) on the process group this harness created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
