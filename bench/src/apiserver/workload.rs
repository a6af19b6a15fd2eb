//! The traffic: creates, gets, lists and the watch fan-out.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_bench::https::ApiClient;
use skiff_bench::process::memory;
use skiff_bench::stats::Summary;
use tokio::task::JoinSet;

use super::server::{Etcd, Server};
use super::{Args, Figures, FullList, StoreKind, Watch, PODS};

/// Keeps a phase's figures, or records why it failed so the other phases
/// still run.
fn phase<T>(
    store: StoreKind,
    name: &str,
    result: Result<T>,
    failed: &mut Vec<String>,
) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("[{store}] {name} failed: {e:#}");
            failed.push(format!("{name}: {e:#}"));
            None
        }
    }
}

pub(super) async fn bench_store(store: StoreKind, args: &Args, skiff: &Path) -> Result<Figures> {
    let startup = Duration::from_secs(args.startup_timeout);
    // Declared before the server so that it is dropped (killed) after it.
    let etcd = match store {
        StoreKind::Etcd => {
            progress(store, &format!("starting {}", args.etcd.display()));
            Some(Etcd::start(&args.etcd, startup).await?)
        }
        StoreKind::Redb => None,
    };
    progress(store, &format!("starting {} server", skiff.display()));
    let mut server = Server::start(skiff, store, etcd.as_ref(), &args.disable_controllers)?;
    let api = server.connect(args.http2, startup).await?;
    let mut notes = Vec::new();
    let mut failed = Vec::new();

    // Every later phase needs the pods, so a failed create ends this store.
    let (serial, paced, rest) = args.create_phases();
    progress(
        store,
        &format!(
            "creating {} pods: {serial} one at a time, {paced} by {} workers at {} per second, the rest by {} workers at full speed",
            args.pods, args.concurrency, args.paced_rate, args.concurrency
        ),
    );
    let create_serial = create_pods(&api, 0, serial, 1).await?;
    let create_paced = create_pods_paced(&api, serial, paced, args).await?;
    let create = create_pods(&api, serial + paced, rest, args.concurrency).await?;
    let rss_after_create = memory(server.child.pid())?;

    progress(store, &format!("{} GETs of random pods", args.gets));
    let get = phase(store, "get", get_pods(&api, args).await, &mut failed);
    server.child.check_running()?;

    progress(
        store,
        &format!("{} unpaginated lists of all pods", args.lists),
    );
    let full = list_full(&api, args, &mut notes).await;
    let list_full = phase(store, "unpaginated list", full, &mut failed);
    server.child.check_running()?;

    progress(
        store,
        &format!(
            "{} lists of all pods with limit={}",
            args.lists, args.page_size
        ),
    );
    let paged = list_paged(&api, args, &mut notes).await;
    let list_paged = phase(store, "paginated list", paged, &mut failed);
    server.child.check_running()?;
    let rss_after_lists = memory(server.child.pid())?;
    if list_full.is_none() {
        notes.push(
            "the unpaginated lists failed, so the RSS after them does not include their cost"
                .to_string(),
        );
    }

    progress(
        store,
        &format!("{} watchers, {} updates", args.watchers, args.updates),
    );
    let watch = phase(
        store,
        "watch fan-out",
        watch_fanout(&api, args).await,
        &mut failed,
    );
    server.child.check_running()?;

    let rss_end = memory(server.child.pid())?;
    let etcd_rss_end = etcd.as_ref().map(|e| memory(e.child.pid())).transpose()?;
    Ok(Figures {
        create_serial,
        create_paced,
        create,
        rss_after_create,
        get,
        list_full,
        list_paged,
        rss_after_lists,
        watch,
        rss_end,
        etcd_rss_end,
        notes,
        failed,
    })
}

fn progress(store: StoreKind, what: &str) {
    eprintln!("[{store}] {what}");
}

/// Runs `op(0..total)` on `concurrency` workers, timing each call.
async fn run_workers<F, Fut>(concurrency: usize, total: usize, op: F) -> Result<Summary>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    run(concurrency, total, None, op).await
}

/// Runs `op(0..total)` on `concurrency` workers, call `i` due at
/// `i / rate` seconds from the start: an open-loop load at a fixed rate.
/// Each call is timed from when it was due, not from when a worker got to
/// it, so time spent waiting for a free worker (the server falling behind)
/// counts in its latency rather than being left out.
async fn run_paced<F, Fut>(concurrency: usize, total: usize, rate: f64, op: F) -> Result<Summary>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    run(concurrency, total, Some(rate), op).await
}

/// The workers of [`run_workers`] (`rate` None: each call as soon as a
/// worker is free, timed from then) and [`run_paced`].
async fn run<F, Fut>(concurrency: usize, total: usize, rate: Option<f64>, op: F) -> Result<Summary>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(total) {
        let (op, next) = (Arc::clone(&op), Arc::clone(&next));
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let due = match rate {
                    Some(rate) => {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due).await;
                        due
                    }
                    None => tokio::time::Instant::now(),
                };
                op(i).await?;
                latencies.push(due.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(total);
    // Returning early on the first error drops the set, which aborts the rest.
    while let Some(done) = workers.join_next().await {
        all.extend(done.context("a benchmark worker panicked")??);
    }
    Ok(Summary::new(all, start.elapsed()))
}

fn pod_name(i: usize) -> String {
    format!("bench-{i:05}")
}

/// A small pod of the kind users write: labels, one container with a port
/// and resources.
fn pod_json(i: usize) -> Bytes {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(i),
            "labels": {"app": "bench", "tier": if i.is_multiple_of(4) { "db" } else { "web" }, "shard": format!("s{}", i % 16)},
            "annotations": {"bench.skiff.dev/index": i.to_string()}
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "nginx:1.27",
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "SHARD", "value": format!("s{}", i % 16)}],
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
            }]
        }
    });
    Bytes::from(pod.to_string())
}

/// Creates pods `first..first + count` at `--paced-rate` with
/// `--concurrency` workers.
async fn create_pods_paced(
    api: &ApiClient,
    first: usize,
    count: usize,
    args: &Args,
) -> Result<Summary> {
    let api = api.clone();
    run_paced(args.concurrency, count, args.paced_rate, move |i| {
        create_pod(api.clone(), first + i)
    })
    .await
}

async fn create_pod(api: ApiClient, i: usize) -> Result<()> {
    api.expect(
        StatusCode::CREATED,
        Method::POST,
        PODS,
        Some("application/json"),
        pod_json(i),
    )
    .await?;
    Ok(())
}

/// Creates pods `first..first + count` with `concurrency` workers.
async fn create_pods(
    api: &ApiClient,
    first: usize,
    count: usize,
    concurrency: usize,
) -> Result<Summary> {
    let api = api.clone();
    run_workers(concurrency, count, move |i| {
        create_pod(api.clone(), first + i)
    })
    .await
}

/// A well-mixed index (splitmix64), so both stores see the same "random"
/// sequence of pods.
fn spread(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn get_pods(api: &ApiClient, args: &Args) -> Result<Summary> {
    let api = api.clone();
    let pods = args.pods as u64;
    run_workers(args.concurrency, args.gets, move |i| {
        let api = api.clone();
        // The modulus is below `args.pods`, so it fits in usize.
        let path = format!("{PODS}/{}", pod_name((spread(i) % pods) as usize));
        async move {
            api.expect(StatusCode::OK, Method::GET, &path, None, Bytes::new())
                .await?;
            Ok(())
        }
    })
    .await
}

fn item_count(body: &[u8], path: &str) -> Result<(usize, Option<String>)> {
    let list: Value =
        serde_json::from_slice(body).with_context(|| format!("GET {path} did not return JSON"))?;
    let items = list["items"]
        .as_array()
        .with_context(|| format!("GET {path} returned no items array"))?;
    let cont = list["metadata"]["continue"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    Ok((items.len(), cont))
}

fn lists_divisor(args: &Args) -> Result<u32> {
    u32::try_from(args.lists).context("--lists is too large")
}

/// Lists all pods in one response `--lists` times.
async fn list_full(api: &ApiClient, args: &Args, notes: &mut Vec<String>) -> Result<FullList> {
    let mut total = Duration::ZERO;
    let mut bytes = 0;
    for _ in 0..args.lists {
        let t = Instant::now();
        let body = api
            .expect(StatusCode::OK, Method::GET, PODS, None, Bytes::new())
            .await?;
        let (count, _) = item_count(&body, PODS)?;
        total += t.elapsed();
        bytes = body.len();
        if count != args.pods {
            notes.push(format!(
                "GET {PODS} returned {count} pods, {} were created",
                args.pods
            ));
        }
    }
    Ok(FullList {
        per_list: total / lists_divisor(args)?,
        bytes,
    })
}

/// Lists all pods `--lists` times in pages of `--page-size`, following
/// `continue`; returns the mean time of one whole list.
async fn list_paged(api: &ApiClient, args: &Args, notes: &mut Vec<String>) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for _ in 0..args.lists {
        let t = Instant::now();
        let mut count = 0;
        let mut pages = 0;
        let mut cont: Option<String> = None;
        loop {
            let mut path = format!("{PODS}?limit={}", args.page_size);
            if let Some(c) = &cont {
                path.push_str("&continue=");
                path.push_str(&query_escape(c));
            }
            let body = api
                .expect(StatusCode::OK, Method::GET, &path, None, Bytes::new())
                .await?;
            let (n, next) = item_count(&body, &path)?;
            count += n;
            pages += 1;
            match next {
                Some(c) => cont = Some(c),
                None => break,
            }
            ensure!(
                pages <= args.pods / args.page_size + 2,
                "paginated list of {PODS} does not end (at {path})"
            );
        }
        total += t.elapsed();
        if count != args.pods {
            notes.push(format!(
                "paginated GET {PODS} returned {count} pods, {} were created",
                args.pods
            ));
        }
    }
    Ok(total / lists_divisor(args)?)
}

/// Percent-encodes a query parameter value.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Opens the watchers at the current revision, patches a label `updates`
/// times and measures until every watcher has seen every MODIFIED event.
async fn watch_fanout(api: &ApiClient, args: &Args) -> Result<Watch> {
    let probe = format!("{PODS}?limit=1");
    let body = api
        .expect(StatusCode::OK, Method::GET, &probe, None, Bytes::new())
        .await?;
    let list: Value = serde_json::from_slice(&body)
        .with_context(|| format!("GET {probe} did not return JSON"))?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .with_context(|| format!("GET {probe} returned no metadata.resourceVersion"))?
        .to_string();
    let path = format!("{PODS}?watch=1&resourceVersion={rv}");

    let mut opening = JoinSet::new();
    for _ in 0..args.watchers {
        let (api, path) = (api.clone(), path.clone());
        opening.spawn(async move { api.open(Method::GET, &path, None, Bytes::new()).await });
    }
    let mut streams = Vec::with_capacity(args.watchers);
    while let Some(opened) = opening.join_next().await {
        let resp = opened.context("opening a watch panicked")??;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            bail!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        streams.push(resp.into_body());
    }

    let seen: Arc<Vec<AtomicUsize>> =
        Arc::new((0..args.watchers).map(|_| AtomicUsize::new(0)).collect());
    let start = Instant::now();
    let mut watchers = JoinSet::new();
    for (w, mut body) in streams.into_iter().enumerate() {
        let (seen, path, want) = (Arc::clone(&seen), path.clone(), args.updates);
        watchers.spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            while seen[w].load(Ordering::Relaxed) < want {
                let frame = match body.frame().await {
                    Some(frame) => frame.with_context(|| format!("reading watch GET {path}"))?,
                    None => bail!(
                        "watch GET {path} ended after {} of {want} events",
                        seen[w].load(Ordering::Relaxed)
                    ),
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let event: Value = serde_json::from_slice(&line).with_context(|| {
                        format!(
                            "watch GET {path} sent a line that is not JSON: {}",
                            String::from_utf8_lossy(&line)
                        )
                    })?;
                    match event["type"].as_str() {
                        Some("MODIFIED") => {
                            seen[w].fetch_add(1, Ordering::Relaxed);
                        }
                        Some("BOOKMARK") => {}
                        _ => bail!(
                            "watch GET {path} sent an unexpected event: {}",
                            String::from_utf8_lossy(&line)
                        ),
                    }
                }
            }
            Ok(start.elapsed())
        });
    }

    let update = {
        let api = api.clone();
        let pods = args.pods;
        run_workers(args.concurrency, args.updates, move |j| {
            let api = api.clone();
            let path = format!("{PODS}/{}", pod_name(j % pods));
            let patch = Bytes::from(
                json!({"metadata": {"labels": {"bench-update": format!("u{j}")}}}).to_string(),
            );
            async move {
                api.expect(
                    StatusCode::OK,
                    Method::PATCH,
                    &path,
                    Some("application/merge-patch+json"),
                    patch,
                )
                .await?;
                Ok(())
            }
        })
        .await?
    };

    let timeout = Duration::from_secs(args.watch_timeout);
    let mut all_seen = Duration::ZERO;
    let waited = tokio::time::timeout(timeout, async {
        while let Some(done) = watchers.join_next().await {
            all_seen = all_seen.max(done.context("a watcher panicked")??);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match waited {
        Ok(result) => result?,
        Err(_) => {
            let counts: Vec<usize> = seen.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let done = counts.iter().filter(|&&c| c >= args.updates).count();
            let least = counts.iter().min().copied().unwrap_or(0);
            bail!(
                "after {timeout:?}, {done} of {} watchers (GET {path}) had seen all {} updates; the slowest had seen {least}",
                args.watchers,
                args.updates
            );
        }
    }
    let events = (args.watchers * args.updates) as f64;
    Ok(Watch {
        all_seen,
        events_per_second: events / all_seen.as_secs_f64().max(f64::EPSILON),
        update,
    })
}
