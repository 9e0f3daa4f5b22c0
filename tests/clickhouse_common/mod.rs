//! ClickHouse fixtures: a database of its own per test on the machine's server (127.0.0.1:8123, user default),
//! dropped when the fixture is; and a private server on a free port for tests that stop ClickHouse.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bgmigrate::clickhouse::ClickHouse;

/// The machine's ClickHouse (CI starts it with scripts/ensure-services.sh).
pub fn server_url() -> String {
    std::env::var("BGMIGRATE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A ClickHouse database of its own, dropped with this value.
pub struct TestClickHouse {
    pub name: String,
    pub url: String,
    pub client: ClickHouse,
    server: String,
}

impl TestClickHouse {
    /// Creates an empty database named after the test on the machine's server.
    pub async fn create(test: &str) -> TestClickHouse {
        TestClickHouse::create_on(&server_url(), test).await
    }

    /// Creates an empty database on the server at `server` (`http://host:port`).
    pub async fn create_on(server: &str, test: &str) -> TestClickHouse {
        let name = format!(
            "bgm_{}_{}_{}",
            test.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(30)
                .collect::<String>(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let url = format!("{server}/{name}");
        let client = ClickHouse::from_url(&url).expect("clickhouse url");
        let admin = client.with_database("default");
        admin
            .execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .expect("drop database");
        admin
            .execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        TestClickHouse {
            name,
            url,
            client,
            server: server.to_owned(),
        }
    }

    /// Runs statements, panicking on failure.
    pub async fn exec(&self, sql: &str) {
        self.client
            .execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// `OPTIMIZE TABLE ... FINAL`, retried briefly: a busy server may refuse it while background merges run.
    pub async fn optimize_final(&self, table: &str) {
        let sql = format!("OPTIMIZE TABLE {table} FINAL");
        for _ in 0..20 {
            if self.client.execute(&sql).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        self.exec(&sql).await;
    }

    /// The first value of a query.
    pub async fn value(&self, sql: &str) -> String {
        self.client
            .query_value(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for TestClickHouse {
    fn drop(&mut self) {
        let _ = Command::new("curl")
            .args(["-s", "--max-time", "10", &format!("{}/", self.server)])
            .args([
                "--data-binary",
                &format!("DROP DATABASE IF EXISTS {}", self.name),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

/// A private ClickHouse server on a free port with its data in a temp dir; killed and removed when dropped.
pub struct PrivateServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> PrivateServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut server = PrivateServer {
            port,
            dir,
            child: None,
        };
        server.write_config();
        server.resume();
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    fn write_config(&self) {
        let root = self.root();
        let tcp_port = free_port();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/server.err.log</errorlog><console>0</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <user_files_path>{root}/user_files/</user_files_path>
    <format_schema_path>{root}/format_schemas/</format_schema_path>
    <mark_cache_size>5368709</mark_cache_size>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
</yandex>
"#,
            root = root.display(),
            port = self.port,
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
"#;
        std::fs::write(root.join("config.xml"), config).unwrap();
        std::fs::write(root.join("users.xml"), users).unwrap();
    }

    /// (Re)starts the server process on the same port and data, and waits until it answers.
    pub fn resume(&mut self) {
        let root = self.root();
        let child = Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                root.join("config.xml").display()
            ))
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "private clickhouse-server did not answer on port {}; log: {}",
                self.port,
                std::fs::read_to_string(root.join("server.err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        Command::new("curl")
            .args(["-s", "--max-time", "1", &format!("{}/ping", self.url())])
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"Ok."))
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
