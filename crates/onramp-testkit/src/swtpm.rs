//! A software TPM for tests: `swtpm`, driven with `tpm2-tools`, its EK and
//! SRK made with the SDKs' templates by
//! `crates/onramp-core/tests/data/tpm/tpm-keys.sh`, and a [`SimulatorShim`]
//! that lets a device SDK speaking the TPM simulator protocol use it.
//!
//! Needs the Debian packages `swtpm`, `swtpm-tools` and `tpm2-tools`
//! (scripts/test installs them); see [`tools_installed`].
//!
//! Everything here panics on failure: it is test setup.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_core::sas;
use onramp_core::tpm::RsaPublic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The persistent handle of the endorsement key, where the SDKs look for it
/// (and tpm-keys.sh puts it).
pub const EK_HANDLE: &str = "0x81010001";
/// The persistent handle of the storage root key.
pub const SRK_HANDLE: &str = "0x81000001";

/// The folder of tpm-keys.sh and the committed ek.pub/srk.pub.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../onramp-core/tests/data/tpm")
}

/// Whether swtpm and tpm2-tools are installed. When they are not, a run
/// that requires the interop environment (`ONRAMP_REQUIRE_INTEROP`, set by
/// scripts/test) panics, and any other run is told the test is skipped.
pub fn tools_installed() -> bool {
    let runs = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs("swtpm") && runs("tpm2_createprimary") {
        return true;
    }
    assert!(
        std::env::var("ONRAMP_REQUIRE_INTEROP").is_err(),
        "swtpm and tpm2-tools are not installed; run scripts/test \
         (apt-get install swtpm swtpm-tools tpm2-tools)"
    );
    eprintln!(
        "skipping: swtpm and tpm2-tools are not installed \
         (apt-get install swtpm swtpm-tools tpm2-tools; scripts/test installs them)"
    );
    false
}

/// A software TPM on two loopback ports (commands, and control on the next
/// one), stopped when dropped. It serves one client at a time.
pub struct Swtpm {
    pid: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

/// A free loopback port whose successor is free as well (both let go).
fn free_port_pair() -> Option<u16> {
    let probe = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = probe.local_addr().ok()?.port();
    let next = port.checked_add(1)?;
    TcpListener::bind(("127.0.0.1", next)).ok()?;
    Some(port)
}

impl Swtpm {
    /// Starts a fresh TPM, already powered on and started up.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("the state folder");
        let pid_file = dir.path().join("swtpm.pid");
        // With --daemon the command returns once the TPM is initialised and
        // its ports listen. Another process may take a probed port before
        // swtpm binds it: then swtpm fails, and another pair is tried.
        for _ in 0..20 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            let out = Command::new("swtpm")
                .args(["socket", "--tpm2", "--daemon", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--pid")
                .arg(format!("file={}", pid_file.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .output()
                .expect("swtpm starts");
            if !out.status.success() {
                eprintln!(
                    "swtpm on ports {port}/{} failed ({}): {}; trying other ports",
                    port + 1,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                continue;
            }
            let pid = std::fs::read_to_string(&pid_file)
                .expect("swtpm wrote its pid")
                .trim()
                .to_owned();
            return Self { pid, port, dir };
        }
        panic!("swtpm could not bind a pair of loopback ports in 20 tries");
    }

    /// The TCTI that points tpm2-tools at this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A file in this TPM's scratch folder, where [`Self::run`] runs.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a tpm2-tools command against this TPM, in its scratch folder.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"))
    }

    /// Runs a tpm2-tools command that must succeed.
    pub fn ok(&self, program: &str, args: &[&str]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates the EK and SRK with the SDKs' templates, persists them at the
    /// SDKs' handles and returns the files of their public areas as the
    /// device sends them (marshaled TPM2B_PUBLIC): (EK, SRK).
    pub fn make_key_files(&self) -> (PathBuf, PathBuf) {
        let out = self.path("keys");
        let status = Command::new("bash")
            .arg(data_dir().join("tpm-keys.sh"))
            .arg(&out)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .status()
            .expect("bash runs");
        assert!(status.success(), "tpm-keys.sh failed");
        (out.join("ek.pub"), out.join("srk.pub"))
    }

    /// [`Self::make_key_files`], parsed: (EK, SRK).
    pub fn make_keys(&self) -> (RsaPublic, RsaPublic) {
        let (ek, srk) = self.make_key_files();
        let read = |path: PathBuf| {
            RsaPublic::parse(&std::fs::read(&path).expect("tpm-keys.sh wrote the key"))
                .expect("an RSA public area")
        };
        (read(ek), read(srk))
    }

    /// A [`SimulatorShim`] in front of this TPM, on the current tokio
    /// runtime. The TPM serves one client at a time: tpm2-tools cannot use
    /// it while a device is connected through the shim.
    pub async fn simulator_shim(&self) -> SimulatorShim {
        SimulatorShim::start(self.port).await
    }
}

/// What a device does with its TPM, through tpm2-tools.
impl Swtpm {
    /// What a device does with an activation blob (§5.4): the credential
    /// opened with the EK, the key imported and loaded under the SRK. Returns
    /// the tpm2_activatecredential output when that step fails.
    pub fn import(&self, blob: &[u8]) -> Result<(), String> {
        let items = split_blob(blob);
        // tpm2-tools' credential file: magic, version, TPM2B_ID_OBJECT,
        // TPM2B_ENCRYPTED_SECRET (what tpm2_makecredential writes).
        let mut credential = vec![0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1];
        credential.extend_from_slice(items[0]);
        credential.extend_from_slice(items[1]);
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(self.path(name), bytes).expect("a file in the scratch folder")
        };
        write("credential", &credential);
        write("duplicate", items[2]);
        write("seed", items[3]);
        write("identity.pub", items[4]);
        assert_eq!(items[5], [0, 0], "the sixth item is present and empty");

        // The EK's policy: PolicySecret(TPM_RH_ENDORSEMENT).
        self.ok(
            "tpm2_startauthsession",
            &["--policy-session", "-S", "session.ctx"],
        );
        self.ok("tpm2_policysecret", &["-S", "session.ctx", "-c", "e"]);
        let activated = self.run(
            "tpm2_activatecredential",
            &[
                "-c",
                SRK_HANDLE,
                "-C",
                EK_HANDLE,
                "-i",
                "credential",
                "-o",
                "inner.key",
                "-P",
                "session:session.ctx",
            ],
        );
        self.ok("tpm2_flushcontext", &["session.ctx"]);
        if !activated.status.success() {
            return Err(String::from_utf8_lossy(&activated.stderr).into_owned());
        }
        assert_eq!(
            std::fs::read(self.path("inner.key"))
                .expect("tpm2_activatecredential wrote the key")
                .len(),
            16,
            "the inner wrap key is an AES-128 key, as the C and C# SDKs import it"
        );
        self.ok(
            "tpm2_import",
            &[
                "-C",
                SRK_HANDLE,
                "-u",
                "identity.pub",
                "-i",
                "duplicate",
                "-s",
                "seed",
                "-k",
                "inner.key",
                "-r",
                "identity.priv",
            ],
        );
        self.ok(
            "tpm2_load",
            &[
                "-C",
                SRK_HANDLE,
                "-u",
                "identity.pub",
                "-r",
                "identity.priv",
                "-c",
                "identity.ctx",
            ],
        );
        Ok(())
    }

    /// A SharedAccessSignature for `resource` signed inside the TPM with the
    /// key [`Self::import`] loaded, as the SDKs sign theirs.
    pub fn sign(&self, resource: &str, expiry: i64, key_name: Option<&str>) -> String {
        let sr = sas::encode(resource);
        std::fs::write(self.path("to-sign"), format!("{sr}\n{expiry}"))
            .expect("a file in the scratch folder");
        self.ok(
            "tpm2_hmac",
            &[
                "-c",
                "identity.ctx",
                "-g",
                "sha256",
                "-o",
                "signature",
                "to-sign",
            ],
        );
        // Without a resource manager the loaded key stays: free the slot.
        self.ok("tpm2_flushcontext", &["-t"]);
        let signature = std::fs::read(self.path("signature")).expect("tpm2_hmac wrote it");
        assert_eq!(signature.len(), 32, "an HMAC-SHA256");
        let sig = sas::encode(&STANDARD.encode(signature));
        let mut token = format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}");
        if let Some(name) = key_name {
            token.push_str("&skn=");
            token.push_str(name);
        }
        token
    }
}

/// The six TPM "2B" items, each with its size field.
fn split_blob(blob: &[u8]) -> Vec<&[u8]> {
    let mut items = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        let len = usize::from(u16::from_be_bytes([blob[at], blob[at + 1]]));
        items.push(&blob[at..at + 2 + len]);
        at += 2 + len;
    }
    assert_eq!(at, blob.len());
    assert_eq!(items.len(), 6);
    items
}

/// The TPM simulator protocol's codes that the shim handles.
mod code {
    /// Command port: a TPM command follows (locality, size, bytes).
    pub const SEND_COMMAND: u32 = 8;
    /// Command port: the client's protocol version follows.
    pub const HAND_SHAKE: u32 = 15;
    /// Command port: the client is done with this connection.
    pub const SESSION_END: u32 = 20;
    /// Command port: the client asks the simulator to stop.
    pub const STOP: u32 = 21;
}

/// Device SDKs built on a TPM simulator client (the Node SDK's tss.js) speak
/// the simulator's framing, while swtpm takes bare TPM commands. The shim
/// listens on two adjacent loopback ports like the simulator: on the
/// command port it answers the handshake itself and forwards each framed
/// TPM command bare to swtpm (one swtpm connection per client connection),
/// framing the answer back; on the platform port it acknowledges every
/// signal (power, NV), which swtpm does not need since it runs started up.
///
/// Its tasks run on the tokio runtime that started it, so the test must not
/// block that runtime while a client uses the shim. Stopped when dropped.
pub struct SimulatorShim {
    port: u16,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimulatorShim {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SimulatorShim {
    async fn start(swtpm_port: u16) -> Self {
        for _ in 0..20 {
            let Ok(commands) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                continue;
            };
            let port = commands.local_addr().expect("a bound address").port();
            let Some(next) = port.checked_add(1) else {
                continue;
            };
            let Ok(platform) = tokio::net::TcpListener::bind(("127.0.0.1", next)).await else {
                continue;
            };
            let tasks = vec![
                tokio::spawn(accept(commands, move |client| {
                    forward_commands(client, swtpm_port)
                })),
                tokio::spawn(accept(platform, acknowledge_signals)),
            ];
            return Self { port, tasks };
        }
        panic!("no pair of adjacent loopback ports for the TPM simulator shim in 20 tries");
    }

    /// The command port; the platform port is the next one.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Serves every connection to `listener` with `serve`, each in its own task.
async fn accept<F, Fut>(listener: tokio::net::TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    while let Ok((client, _)) = listener.accept().await {
        let served = serve(client);
        tokio::spawn(async move {
            // A client that exits without ending its session resets the
            // connection: that is an end like any other.
            match served.await {
                Err(e) if e.kind() != std::io::ErrorKind::ConnectionReset => {
                    eprintln!("TPM simulator shim: a client connection failed: {e}");
                }
                _ => {}
            }
        });
    }
}

async fn forward_commands(mut client: TcpStream, swtpm_port: u16) -> std::io::Result<()> {
    let mut tpm: Option<TcpStream> = None;
    loop {
        let code = match client.read_u32().await {
            Ok(code) => code,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        match code {
            code::HAND_SHAKE => {
                // The same version back, no simulator properties, success.
                let version = client.read_u32().await?;
                let mut answer = Vec::with_capacity(12);
                answer.extend_from_slice(&version.to_be_bytes());
                answer.extend_from_slice(&0u32.to_be_bytes());
                answer.extend_from_slice(&0u32.to_be_bytes());
                client.write_all(&answer).await?;
            }
            code::SEND_COMMAND => {
                let _locality = client.read_u8().await?;
                let size = client.read_u32().await?;
                let mut command = vec![0; usize::try_from(size).map_err(std::io::Error::other)?];
                client.read_exact(&mut command).await?;
                let swtpm = match &mut tpm {
                    Some(swtpm) => swtpm,
                    None => tpm.insert(TcpStream::connect(("127.0.0.1", swtpm_port)).await?),
                };
                swtpm.write_all(&command).await?;
                // A TPM response: tag (2 bytes), total size (4), then the rest.
                let mut header = [0; 6];
                swtpm.read_exact(&mut header).await?;
                let total = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
                let rest = usize::try_from(total)
                    .ok()
                    .and_then(|t| t.checked_sub(header.len()))
                    .ok_or_else(|| {
                        std::io::Error::other("a TPM response shorter than its header")
                    })?;
                let mut response = header.to_vec();
                response.resize(header.len() + rest, 0);
                swtpm.read_exact(&mut response[header.len()..]).await?;
                let mut answer = Vec::with_capacity(response.len() + 8);
                answer.extend_from_slice(&total.to_be_bytes());
                answer.extend_from_slice(&response);
                answer.extend_from_slice(&0u32.to_be_bytes());
                client.write_all(&answer).await?;
            }
            code::SESSION_END | code::STOP => return Ok(()),
            other => {
                return Err(std::io::Error::other(format!(
                    "simulator command {other} is not supported"
                )));
            }
        }
    }
}

async fn acknowledge_signals(mut client: TcpStream) -> std::io::Result<()> {
    loop {
        match client.read_u32().await {
            Ok(_signal) => client.write_all(&0u32.to_be_bytes()).await?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
