#![allow(unsafe_code)]
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 { LIVE.fetch_add(l.size() as isize, Ordering::Relaxed); unsafe { System.alloc(l) } }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) { LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed); unsafe { System.dealloc(p, l) } }
}
#[global_allocator]
static A: Counting = Counting;
#[test]
fn mem() {
    use k8s_openapi::api::core::v1::Service;
    let zone = skiff_dns::records::Zone::new("cluster.local", 5).unwrap();
    let mut idx = skiff_dns::index::Index::new(zone.clone());
    let svcs: Vec<Service> = (0..10000).map(|i| serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
        "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1), "clusterIPs": [format!("10.96.{}.{}", i / 250, i % 250 + 1)], "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})).unwrap()).collect();
    let before = LIVE.load(Ordering::Relaxed);
    for s in &svcs {
        let recs = skiff_dns::records::service_records(&zone, s, std::iter::empty());
        idx.set(skiff_dns::index::Source::Service { namespace: "default".into(), name: s.metadata.name.clone().unwrap() }, recs);
    }
    let after = LIVE.load(Ordering::Relaxed);
    eprintln!("index: {} bytes for 10k services, {} names", after - before, idx.len());
    let before = LIVE.load(Ordering::Relaxed);
    let svcs2 = svcs.clone();
    eprintln!("10k k8s Services clone: {}", LIVE.load(Ordering::Relaxed) - before);
    drop(svcs2);
}
