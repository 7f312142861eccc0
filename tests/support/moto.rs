//! Starts one moto server (EC2 and SQS) per test binary, on a loopback port bound here and handed to it.
//!
//! The listening socket is bound by this process (port 0) and passed to moto as its stdin; werkzeug
//! serves an inherited socket when `WERKZEUG_RUN_MAIN=true` and `WERKZEUG_SERVER_FD` name it. No
//! port is probed and re-bound, so there is no race, and requests sent before moto has started
//! simply wait in the socket's backlog. moto dies with the test binary (parent-death signal).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Runs moto's own entry point (`moto.server.main`, what `.venv/bin/moto_server` calls) with a
/// parent-death signal, so an aborted test run leaves no server behind.
const WRAPPER: &str = r#"
import ctypes, os, signal, sys
ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
if os.getppid() != int(os.environ["GANTRY_TEST_PARENT_PID"]):
    sys.exit(0)
sys.argv = ["moto_server"] + sys.argv[1:]
from moto.server import main
sys.exit(main())
"#;

fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin")
}

static URL: OnceLock<Result<String, String>> = OnceLock::new();

/// The moto base URL, starting it on first use; `None` (after a loud message) when moto is not
/// installed and `CI` is not `true`.
///
/// # Panics
/// When moto is missing and `CI=true`, or when it does not start.
pub fn url() -> Option<String> {
    let server = venv().join("moto_server");
    if !server.exists() {
        let msg = format!(
            "moto is not installed at {}; run scripts/setup-moto.sh",
            server.display()
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg} (CI=true: moto tests must not be skipped)");
        }
        eprintln!("\n!!!!!!!! SKIPPING EC2 MOTO TEST: {msg} !!!!!!!!\n");
        return None;
    }
    match URL.get_or_init(start) {
        Ok(u) => Some(u.clone()),
        Err(e) => panic!("moto did not start: {e}"),
    }
}

fn start() -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    // The parent-death signal fires when the spawning *thread* exits, so spawn from a thread
    // that lives as long as the test binary.
    std::thread::spawn(move || {
        let result = spawn();
        let ok = result.is_ok();
        let _ = tx.send(result);
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    let url = rx.recv().map_err(|e| e.to_string())??;
    // The socket already listens, so this waits in the backlog until moto serves.
    reset(&url)?;
    Ok(url)
}

fn spawn() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let fd: OwnedFd = listener.into();
    let log = std::env::temp_dir().join(format!("gantry-moto-{}.log", std::process::id()));
    let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    Command::new(venv().join("python"))
        .arg("-c")
        .arg(WRAPPER)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("WERKZEUG_RUN_MAIN", "true")
        .env("WERKZEUG_SERVER_FD", "0")
        .env("GANTRY_TEST_PARENT_PID", std::process::id().to_string())
        .stdin(Stdio::from(fd))
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| e.to_string())?;
    Ok(format!("http://127.0.0.1:{port}"))
}

/// `POST /moto-api/reset`: clears every backend (only safe when no other test is using it).
pub fn reset(url: &str) -> Result<(), String> {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /moto-api/reset HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    if reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!(
            "reset answered {:?}",
            reply.lines().next().unwrap_or_default()
        ))
    }
}
