//! Private Postgres servers, each on a free port in a temporary directory, started with the server's own tools
//! (`initdb`, `pg_basebackup -R`, `pg_ctl`) as user postgres when the tests run as root, and stopped when dropped:
//! one server with settings of the test's own ([`PrivateServer`]), or a primary with a streaming standby
//! ([`Replicated`]).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A primary and its standby.
pub struct Replicated {
    pub primary_port: u16,
    pub standby_port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The newest installed server's tools.
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "a Postgres server under /usr/lib/postgresql (scripts/ensure-services.sh installs it)",
        )
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("initdb of an installed Postgres server")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a server tool, as user postgres when this process is root (the server refuses to run as root).
fn run(bin: &Path, tool: &str, args: &[&str]) {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let program = bin.join(tool);
    let output = if is_root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&program)
            .args(args)
            .output()
    } else {
        Command::new(&program).args(args).output()
    };
    let output = output.unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A temporary directory owned by user postgres, under /tmp.
fn server_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir");
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status();
    dir
}

/// Creates a cluster in `dir/name` listening on `port` with `settings` appended to its configuration, and starts it.
fn init_and_start(bin: &Path, dir: &Path, name: &str, port: u16, settings: &str) {
    let data = dir.join(name);
    run(
        bin,
        "initdb",
        &[
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ],
    );
    let socket_dir = dir.to_str().unwrap();
    append(
        &data.join("postgresql.conf"),
        &format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{socket_dir}'\n\
             fsync = off\nautovacuum = off\n{settings}\n"
        ),
    );
    start(bin, dir, name);
}

/// Starts the server in `dir/name`, logging to `dir/name.log`, and waits until it accepts connections.
fn start(bin: &Path, dir: &Path, name: &str) {
    let data = dir.join(name);
    let log = dir.join(format!("{name}.log"));
    run(
        bin,
        "pg_ctl",
        &[
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ],
    );
}

/// Stops the servers in `dir` named `names`, at once.
fn stop(bin: &Path, dir: &Path, names: &[&str]) {
    for name in names {
        let data = dir.join(name);
        let _ = std::panic::catch_unwind(|| {
            run(
                bin,
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
            )
        });
    }
}

fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// One server with settings of the test's own.
pub struct PrivateServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl PrivateServer {
    /// Starts a server with `settings` (lines of `postgresql.conf`).
    pub fn start(settings: &str) -> PrivateServer {
        let bin = server_bin();
        let dir = server_dir("bgm-pg-");
        let port = free_port();
        init_and_start(&bin, dir.path(), "server", port, settings);
        PrivateServer { port, dir, bin }
    }

    pub fn url(&self) -> String {
        url(self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        stop(&self.bin, self.dir.path(), &["server"]);
    }
}

impl Replicated {
    /// Starts the primary, then the standby from a base backup that streams from it.
    pub fn start() -> Replicated {
        let bin = server_bin();
        let dir = server_dir("bgm-replica-");
        let (primary_port, standby_port) = (free_port(), free_port());
        let standby = dir.path().join("standby");
        init_and_start(
            &bin,
            dir.path(),
            "primary",
            primary_port,
            "wal_level = replica\nmax_wal_senders = 4",
        );
        run(
            &bin,
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                standby.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
            ],
        );
        append(
            &standby.join("postgresql.auto.conf"),
            &format!(
                "\nport = {standby_port}\nwal_receiver_status_interval = 1\nprimary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres application_name=standby1'\n"
            ),
        );
        start(&bin, dir.path(), "standby");
        Replicated {
            primary_port,
            standby_port,
            dir,
            bin,
        }
    }

    pub fn primary_url(&self) -> String {
        url(self.primary_port)
    }

    pub fn standby_url(&self) -> String {
        url(self.standby_port)
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all(text.as_bytes()).unwrap();
}

impl Drop for Replicated {
    fn drop(&mut self) {
        stop(&self.bin, self.dir.path(), &["standby", "primary"]);
    }
}
