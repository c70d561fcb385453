//! Log hygiene of the SIP user agent: SIP messages appear at trace level, the proxy password never
//! does. Its own test binary, so no other test's tracing state interferes with the captured output.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use srbridge::config::{Config, Host, HostPort, ProxyConfig, Secret};
use srbridge::sip::{RegistrationState, SipUa, UaOptions};
use support::pbx::PROXY_ACCOUNT;
use support::Pbx;
use tokio_util::sync::CancellationToken;

/// Collects everything logged on this thread (the test runtime is single-threaded).
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_password_never_reaches_the_logs_even_at_trace_level() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let pbx = Pbx::start().await;
    let mut config = Config::from_rtx_conf_str(
        Path::new("rtx.conf"),
        "[global]\nappid=app\nsip_svr=127.0.0.1:5060\n",
    )
    .expect("base config");
    config.global.sip_svr = HostPort {
        host: Host::Ip(IpAddr::from([127, 0, 0, 1])),
        port: pbx.port(),
    }
    .into();
    config.global.sip_local_port = 0;
    config.sip.listen_ip = IpAddr::from([127, 0, 0, 1]);
    config.proxy = Some(ProxyConfig {
        sip_account: PROXY_ACCOUNT.to_string(),
        sip_pwd: Secret::new("s3cr3t-pw"),
        rtm_account: "proxy".to_string(),
    });
    let (ua, _calls) = SipUa::start_with(&config, CancellationToken::new(), UaOptions::default())
        .await
        .expect("UA starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(ua.status().registration, RegistrationState::Failed { .. }) {
        assert!(Instant::now() < deadline, "{:?}", ua.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ua.shutdown().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("REGISTER sip:"),
        "SIP messages are traced: {}",
        &text[..text.len().min(3000)]
    );
    assert!(
        text.contains("registration failed"),
        "the failure is logged"
    );
    assert!(!text.contains("s3cr3t-pw"), "password leaked into the logs");
}
