//! The codec micro-benchmark: a `req` envelope with a small typed payload, encoded and decoded by Sockeye's
//! codec (`Payload::encode` → `Envelope::encode` → `Envelope::decode` → `Payload::decode`) and by serde_json
//! on the same structure. `scripts/bench.sh` reads criterion's estimates into the report.

use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};
use sockeye_core::codec::{Envelope, Payload};
use std::hint::black_box;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
    price_cents: u64,
    express: bool,
}

/// The same envelope as one JSON object, as a JSON protocol would carry it.
#[derive(Serialize, Deserialize)]
struct JsonReq {
    t: String,
    id: u64,
    m: String,
    d: Order,
}

fn order() -> Order {
    Order {
        item: "sockeye salmon, smoked".to_owned(),
        quantity: 3,
        price_cents: 2_499,
        express: true,
    }
}

fn sockeye_round_trip(order: &Order) -> Order {
    let envelope = Envelope::Req {
        id: 42,
        method: "order".to_owned(),
        data: Some(Payload::encode(order).expect("a plain struct encodes")),
    };
    let bytes = envelope.encode();
    match Envelope::decode(&bytes).expect("what we encoded decodes") {
        Envelope::Req {
            data: Some(data), ..
        } => data.decode().expect("the payload decodes"),
        other => panic!("decoded {other:?}"),
    }
}

fn json_round_trip(order: &Order) -> Order {
    let req = JsonReq {
        t: "req".to_owned(),
        id: 42,
        m: "order".to_owned(),
        d: order.clone(),
    };
    let bytes = serde_json::to_vec(&req).expect("a plain struct encodes");
    serde_json::from_slice::<JsonReq>(&bytes)
        .expect("what we encoded decodes")
        .d
}

fn codec(c: &mut Criterion) {
    let order = order();
    assert_eq!(sockeye_round_trip(&order), order);
    assert_eq!(json_round_trip(&order), order);
    let mut group = c.benchmark_group("codec");
    group.bench_function("sockeye", |b| {
        b.iter(|| sockeye_round_trip(black_box(&order)))
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| json_round_trip(black_box(&order)))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
