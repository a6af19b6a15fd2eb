//! Update latency of `skiff dns`: how long after an API change the new answer
//! is served. Services are created one by one and skiff dns polled over UDP
//! (a bounded query loop) until it answers each; then a headless Service's
//! EndpointSlice grows one endpoint at a time and each new A record is
//! awaited the same way. The goal is ≤ 100 ms.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_bench::https::ApiClient;
use tokio::net::UdpSocket;

/// How long one change may take before the measurement gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one poll waits for its reply.
const POLL_REPLY: Duration = Duration::from_millis(200);
/// The pause between two polls (the resolution of the measurement).
const POLL_PAUSE: Duration = Duration::from_micros(500);

/// Latencies of one kind of change, from the request sent and from the API's reply.
pub struct Latencies {
    pub from_request: Vec<Duration>,
    pub from_reply: Vec<Duration>,
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            from_request: Vec::new(),
            from_reply: Vec::new(),
        }
    }
}

/// `q`-quantile (0..=1) of `samples` in milliseconds.
pub fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v: Vec<Duration> = samples.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64() * 1000.0
}

/// A DNS query for `name` type A with id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(name.len() + 18);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// Polls `server` for `name` until the reply is NOERROR with `want` answers.
async fn await_answers(server: SocketAddr, name: &str, want: u16) -> Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    sock.connect(server).await?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut buf = [0u8; 4096];
    let mut id: u16 = 1;
    while Instant::now() < deadline {
        id = id.wrapping_add(1);
        sock.send(&query(id, name)).await?;
        let got = tokio::time::timeout(POLL_REPLY, sock.recv(&mut buf)).await;
        if let Ok(Ok(n)) = got {
            let matches = n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id;
            let rcode = buf[3] & 0x0f;
            let answers = u16::from_be_bytes([buf[6], buf[7]]);
            if matches && rcode == 0 && answers == want {
                return Ok(());
            }
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    bail!("{name} not answered with {want} records within {ANSWER_TIMEOUT:?}")
}

async fn post(api: &ApiClient, path: &str, body: &Value) -> Result<Value> {
    let reply = api
        .expect(
            StatusCode::CREATED,
            Method::POST,
            path,
            Some("application/json"),
            Bytes::from(body.to_string()),
        )
        .await?;
    Ok(serde_json::from_slice(&reply)?)
}

/// Creates `n` Services in namespace `ns` one by one, each awaited in DNS.
pub async fn services(api: &ApiClient, dns: SocketAddr, ns: &str, n: usize) -> Result<Latencies> {
    let mut out = Latencies::new();
    let path = format!("/api/v1/namespaces/{ns}/services");
    for i in 0..n {
        let name = format!("upd-{i}");
        let body = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"port": 80}]}});
        let sent = Instant::now();
        post(api, &path, &body).await?;
        let replied = Instant::now();
        await_answers(dns, &format!("{name}.{ns}.svc.cluster.local"), 1).await?;
        out.from_request.push(sent.elapsed());
        out.from_reply.push(replied.elapsed());
    }
    Ok(out)
}

/// Changes a headless Service's EndpointSlice `n` times (it grows from 2 to
/// 20 ready endpoints one at a time, then drops back to 2, so every answer
/// fits a plain 512-byte UDP reply), awaiting each new set of A records.
pub async fn endpoints(api: &ApiClient, dns: SocketAddr, ns: &str, n: usize) -> Result<Latencies> {
    post(
        api,
        &format!("/api/v1/namespaces/{ns}/services"),
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "upd-headless", "namespace": ns},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
    )
    .await?;
    let slices = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices");
    let ep = |i: usize| json!({"addresses": [format!("10.250.0.{}", i + 1)], "conditions": {"ready": true}});
    let mut slice = post(
        api,
        &slices,
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "upd-headless-1", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": "upd-headless"}},
            "addressType": "IPv4", "endpoints": [ep(0)], "ports": [{"port": 80}]}),
    )
    .await?;
    let name = format!("upd-headless.{ns}.svc.cluster.local");
    await_answers(dns, &name, 1).await?;
    let mut out = Latencies::new();
    for step in 0..n {
        let count = 2 + step % 19;
        slice["endpoints"] = Value::Array((0..count).map(ep).collect());
        let sent = Instant::now();
        let reply = api
            .expect(
                StatusCode::OK,
                Method::PUT,
                &format!("{slices}/upd-headless-1"),
                Some("application/json"),
                Bytes::from(slice.to_string()),
            )
            .await?;
        let replied = Instant::now();
        slice = serde_json::from_slice(&reply)?;
        await_answers(dns, &name, count as u16).await?;
        out.from_request.push(sent.elapsed());
        out.from_reply.push(replied.elapsed());
    }
    Ok(out)
}
