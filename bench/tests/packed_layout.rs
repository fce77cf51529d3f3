//! The tools that measure `docs/redis-layout-v2.md` (the floor, the record-script prototype,
//! and `redis-memory` of the store on either layout), each against a real
//! `redis-server` this test starts on a free loopback port: each must write its layout and,
//! for the record-script prototype, pass its own checks of that layout (one hot record per
//! pair, one lease per temporary grant, every consent indexed, every chunk sorted).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callgate_bench::record_prototype::{self, RecordPrototypeArgs};
use callgate_bench::redis_floor::{self, HistoryLayout, IndexLayout, RedisFloorArgs};

/// A throwaway `redis-server`, stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    async fn flush(&self) {
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut self.conn().await)
            .await
            .unwrap();
    }

    /// The Redis types of the keys whose kind (the name after the shard's tag) is `kind`.
    async fn types_of(&self, kind: &str) -> Vec<String> {
        let mut conn = self.conn().await;
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("*}}:{kind}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut types = Vec::new();
        for key in keys {
            let name = String::from_utf8_lossy(&key).into_owned();
            let rest = name.split_once("}:").unwrap().1;
            if rest == kind || rest.starts_with(&format!("{kind}:")) {
                types.push(
                    redis::cmd("TYPE")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap(),
                );
            }
        }
        types.sort();
        types.dedup();
        types
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_record_prototype_keeps_every_structure_it_is_charged_for() {
    let redis = Redis::start();
    let failed = record_prototype::run(
        RecordPrototypeArgs {
            redis_url: redis.url(),
            consents: 3_000,
            pipeline: 32,
            seed: 7,
        },
        false,
        true,
    )
    .await
    .unwrap();
    // Refused calls and failed layout checks, counted: none.
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn every_floor_variant_writes_its_layout() {
    let redis = Redis::start();
    for (history, indexes, native_expiry) in [
        (HistoryLayout::Segments, IndexLayout::SortedSets, false),
        (HistoryLayout::Segments, IndexLayout::Packed, true),
        (HistoryLayout::Stream, IndexLayout::None, false),
    ] {
        redis.flush().await;
        let args = RedisFloorArgs {
            redis_url: redis.url(),
            consents: 2_000,
            pairs_per_bucket: 64,
            seed: 1,
            history,
            native_expiry,
            indexes,
        };
        assert_eq!(redis_floor::run(args, false, true).await.unwrap(), 0);
        let history = match history {
            HistoryLayout::Segments => "string",
            HistoryLayout::Stream => "stream",
        };
        assert_eq!(redis.types_of("g").await, [history]);
        assert_eq!(redis.types_of("p").await, ["hash"]);
        let (sorted, packed): (&[&str], &[&str]) = match indexes {
            IndexLayout::SortedSets => (&["zset"], &[]),
            IndexLayout::Packed => (&[], &["string"]),
            IndexLayout::None => (&[], &[]),
        };
        for kind in ["br", "be", "l"] {
            assert_eq!(redis.types_of(kind).await, sorted, "{kind}");
        }
        for kind in ["bri", "bei", "li"] {
            assert_eq!(redis.types_of(kind).await, packed, "{kind}");
        }
        let leases: &[&str] = if native_expiry { &["string"] } else { &[] };
        assert_eq!(redis.types_of("t").await, leases);
    }
}

#[tokio::test]
async fn redis_memory_measures_the_store_on_both_layouts() {
    use callgate_bench::redis_memory::{self, RedisMemoryArgs};
    let redis = Redis::start();
    for layout in ["v1", "v2"] {
        redis.flush().await;
        let args = RedisMemoryArgs {
            redis_url: redis.url(),
            consents: 2_000,
            batch_size: 100,
            concurrency: 2,
            sample: 50,
            duration: 60.0,
            prefix: "callgate".into(),
            seed: 1,
            layout: layout.into(),
            hot_buckets: None,
        };
        assert_eq!(
            redis_memory::run(args, false, true).await.unwrap(),
            0,
            "{layout}"
        );
        // The store wrote its own layout: v1's per-pair consent keys, or v2's hot records.
        let (present, absent, kind): (&str, &str, &[&str]) = if layout == "v1" {
            ("c", "p", &["string"])
        } else {
            ("p", "c", &["hash"])
        };
        assert_eq!(redis.types_of(present).await, kind, "{layout}");
        assert!(redis.types_of(absent).await.is_empty(), "{layout}");
    }
}
