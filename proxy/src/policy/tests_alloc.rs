//! `decide_request` must not allocate per request: counted with a wrapping
//! global allocator (per thread, so parallel tests do not disturb it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;

use super::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // try_with: the slot may be gone during thread teardown.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// GlobalAlloc contract; counting touches only a const-initialised
// thread-local Cell (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` via `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System`; contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn decide_request_does_not_allocate() {
    let p = Policy::from_yaml(
        r#"
default: deny
rules:
  - {name: exact, match: {host: [a.com, b.com], method: GET}, action: allow}
  - {name: wild, match: {host: "*.s3.amazonaws.com", path_prefix: /my-bucket/}, action: allow}
  - {name: re, match: {host: "~^api[0-9]+\\.example\\.com$"}, action: allow}
  - {name: url, match: {url: '^https://s3\.amazonaws\.com/my-bucket/'}, action: allow, tag: s3}
  - {name: src, match: {client_cidr: 10.0.0.0/8, port: [443, 8443], sni: "*.internal", host: "*.internal"}, action: intercept}
"#,
    )
    .unwrap();
    let c = ConnFacts {
        client: IpAddr::from([10, 1, 2, 3]),
        dst_port: 443,
        sni: Some("Svc.Internal"),
        host: None,
        source: None,
    };
    let cases = [
        ("GET", "A.COM", "/", "https://a.com/"),
        (
            "GET",
            "x.s3.amazonaws.com",
            "/my-bucket/k",
            "https://x.s3.amazonaws.com/my-bucket/k",
        ),
        ("GET", "api7.example.com", "/", "https://api7.example.com/"),
        (
            "PUT",
            "s3.amazonaws.com",
            "/my-bucket/k",
            "https://s3.amazonaws.com/my-bucket/k",
        ),
        ("GET", "svc.internal", "/", "https://svc.internal/"),
        ("GET", "nowhere.org", "/", "https://nowhere.org/"),
        ("GET", "[FD00:0::1]", "/", "https://[fd00::1]/"),
    ];
    let run = || {
        let mut names = [""; 7];
        for (k, (method, host, path, url)) in cases.iter().enumerate() {
            names[k] = p
                .decide_request(&RequestFacts {
                    conn: &c,
                    scheme: Scheme::Https,
                    method,
                    host,
                    path,
                    url,
                })
                .rule;
        }
        names
    };
    // Warm-up: regex caches are allocated on a thread's first search.
    let names = run();
    assert_eq!(
        names,
        ["exact", "wild", "re", "url", "src", "default", "default"]
    );
    let before = allocs();
    for _ in 0..100 {
        run();
        let _ = p.decide_connection(&c);
    }
    assert_eq!(allocs() - before, 0, "decisions allocated");
    // The counter works: a deliberate allocation is seen.
    let v = std::hint::black_box(vec![1u8; 16]);
    assert!(allocs() > before, "counting allocator inactive");
    drop(v);
}
