//! A real mosquitto on a free loopback port, with its own config file, and an MQTT
//! observer that records everything published under a topic filter.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false)
}

/// A mosquitto process. Stopped on drop.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Mosquitto {
    /// A plain anonymous listener on a free port; sessions persist across restarts.
    pub fn start() -> Self {
        Self::start_with(free_port(), "")
    }

    /// `extra` is appended to the config (more listeners, TLS, auth).
    pub fn start_with(port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        let user = if is_root() { "user root\n" } else { "" };
        let text = format!(
            "{user}per_listener_settings true\npersistence true\npersistence_location {}/\nlog_dest file {}/mosquitto.log\n\
             log_type all\nlistener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n",
            dir.path().display(),
            dir.path().display(),
        );
        std::fs::write(&conf, text).unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            conf,
        };
        m.restart();
        m
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (.ci/run installs it with apt-get)");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    /// Stops the broker gracefully (it saves its sessions).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The payload as text when it is UTF-8 (JSON), else its length (images): a failing
/// assertion shows messages a person can read.
impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Received");
        d.field("topic", &self.topic).field("retain", &self.retain);
        match std::str::from_utf8(&self.payload) {
            Ok(text) => d.field("payload", &text),
            Err(_) => d.field("payload_bytes", &self.payload.len()),
        };
        d.finish()
    }
}

/// An MQTT client with a persistent session, recording everything under `filter`.
pub struct Observer {
    pub client: Client,
    pub messages: Arc<Mutex<Vec<Received>>>,
    /// Payloads that break docs/schemas, found as they arrive; `on` fails on the first.
    violations: Arc<Mutex<Vec<String>>>,
}

impl Observer {
    pub fn connect(port: u16, filter: &str) -> Self {
        Self::connect_as(port, filter, None)
    }

    /// Connects with a username and password.
    pub fn connect_as(port: u16, filter: &str, login: Option<(&str, &str)>) -> Self {
        let id = format!("observer-{}", free_port());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut connection) = Client::new(options, 64);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let (sub_client, sink, filter) = (client.clone(), messages.clone(), filter.to_string());
        let broken = violations.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(v) = super::schemas::violation(&p.topic, &p.payload) {
                            broken.lock().unwrap().push(v);
                        }
                        sink.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            at: Instant::now(),
                        })
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("observer subscribed");
        Observer {
            client,
            messages,
            violations,
        }
    }

    pub fn on(&self, topic: &str) -> Vec<Received> {
        if let Some(v) = self.violations.lock().unwrap().first() {
            panic!("a payload breaks its schema: {v}");
        }
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds for the messages on `topic`, or panics after `timeout`.
    pub fn wait_for(
        &self,
        topic: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.on(topic);
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} on {topic}: {} message(s) so far",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
    }
}

/// Reads the retained message of `topic`, if any, with a fresh client. The broker sends
/// retained messages right after the SUBACK: none within 2 s of it means there is none
/// (a loaded machine can take more than a few hundred ms).
pub fn retained(port: u16, topic: &str) -> Option<String> {
    let mut options = MqttOptions::new(format!("retained-{}", free_port()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut connection) = Client::new(options, 10);
    client.subscribe(topic, QoS::AtLeastOnce).unwrap();
    let mut deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                deadline = deadline.min(Instant::now() + Duration::from_secs(2))
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.retain => {
                return Some(String::from_utf8_lossy(&p.payload).into_owned())
            }
            _ => {}
        }
    }
    None
}

/// Whether the broker on `port` accepts a connection as `client_id` with `login`: the
/// CONNACK's verdict, or false when the broker drops the connection instead.
pub fn accepts(port: u16, client_id: &str, login: Option<(&str, &str)>) -> bool {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (_client, mut connection) = Client::new(options, 8);
    match connection.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
            ack.code == rumqttc::ConnectReturnCode::Success
        }
        _ => false,
    }
}
