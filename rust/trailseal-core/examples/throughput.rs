//! Throughput of `event::process_event` (parse, validate, fill defaults, canonicalize) on one core,
//! over seeded synthetic CloudTrail-like events of about 1.6 KB.
//!
//! Run: `cargo run --release -p trailseal-core --example throughput [-- [FILE] EVENTS [PASSES]
//! [index]]` (FILE: NDJSON events to use instead of the generated ones, e.g.
//! `trailseal.synthetic`'s; `index`: also hash the lookup values for the event history, as the
//! daemon does when the history is on).
//! Prints one line: events, average event size, MB/s (MB = 10^6 bytes of input) and events/s.
use std::time::Instant;

use trailseal_core::event::{process_event, EventContext, Receipt};

/// splitmix64: a tiny seeded generator, so every run processes the same events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
            .collect()
    }
}

const NAMES: [&str; 8] = [
    "GetObject",
    "PutObject",
    "AssumeRole",
    "DescribeInstances",
    "ListBuckets",
    "CreateUser",
    "DeleteObject",
    "UpdateFunctionConfiguration",
];
const SOURCES: [&str; 5] = [
    "s3.amazonaws.com",
    "sts.amazonaws.com",
    "ec2.amazonaws.com",
    "iam.amazonaws.com",
    "lambda.amazonaws.com",
];
const USERS: [&str; 5] = ["alice", "bob", "José Müller", "山田太郎", "ops-bot"];

fn event(rng: &mut Rng) -> String {
    let id = format!(
        "{}-{}-4{}-a{}-{}",
        rng.hex(8),
        rng.hex(4),
        rng.hex(3),
        rng.hex(3),
        rng.hex(12)
    );
    let name = rng.pick(&NAMES);
    let source = rng.pick(&SOURCES);
    let user = rng.pick(&USERS);
    let account = format!("{:012}", rng.below(1_000_000_000_000));
    let key_id = format!("ASIA{}", rng.hex(16).to_uppercase());
    let bucket = format!("logs-{}", rng.hex(6));
    let size = rng.below(1 << 40);
    let ratio = rng.below(10_000) as f64 / 7.0;
    format!(
        concat!(
            r#"{{"eventVersion":"1.09","userIdentity":{{"type":"AssumedRole","principalId":"AROA{pid}:{user}","#,
            r#""arn":"arn:aws:sts::{account}:assumed-role/Admin/{user}","accountId":"{account}","#,
            r#""accessKeyId":"{key_id}","sessionContext":{{"sessionIssuer":{{"type":"Role","#,
            r#""principalId":"AROA{pid}","arn":"arn:aws:iam::{account}:role/Admin","accountId":"{account}","#,
            r#""userName":"Admin"}},"webIdFederationData":{{}},"attributes":{{"creationDate":"2026-01-01T10:00:00Z","#,
            r#""mfaAuthenticated":"false"}}}}}},"eventTime":"2026-01-01T12:{mm:02}:{ss:02}.{ms:03}Z","#,
            r#""eventSource":"{source}","eventName":"{name}","awsRegion":"eu-west-1","#,
            r#""sourceIPAddress":"192.0.2.{ip}","userAgent":"aws-cli/2.15.0 Python/3.11.6 Linux/6.1","#,
            r#""requestParameters":{{"bucketName":"{bucket}","key":"reports/2026/01/résumé-{n}.pdf","#,
            r#""partNumber":{part},"#,
            r#""contentLength":{size},"ratio":{ratio},"tags":["café","日本語","\u00e9t\u00e9"]}},"#,
            r#""responseElements":{{"x-amz-server-side-encryption":"AES256","x-amz-version-id":"{ver}"}},"#,
            r#""additionalEventData":{{"SignatureVersion":"SigV4","#,
            r#""bytesTransferredIn":{size},"AuthenticationMethod":"AuthHeader"}},"#,
            r#""requestID":"{req}","eventID":"{id}","readOnly":false,"resources":[{{"type":"AWS::S3::Object","#,
            r#""ARN":"arn:aws:s3:::{bucket}/reports/2026/01/résumé-{n}.pdf"}},{{"accountId":"{account}","#,
            r#""type":"AWS::S3::Bucket","ARN":"arn:aws:s3:::{bucket}"}}],"eventType":"AwsApiCall","#,
            r#""managementEvent":false,"recipientAccountId":"{account}","eventCategory":"Data","#,
            r#""tlsDetails":{{"tlsVersion":"TLSv1.3","cipherSuite":"TLS_AES_128_GCM_SHA256","#,
            r#""clientProvidedHostHeader":"{bucket}.s3.eu-west-1.amazonaws.com"}}}}"#
        ),
        pid = rng.hex(17).to_uppercase(),
        user = user,
        account = account,
        key_id = key_id,
        mm = rng.below(60),
        ss = rng.below(60),
        ms = rng.below(1000),
        source = source,
        name = name,
        ip = rng.below(256),
        bucket = bucket,
        n = rng.below(100_000),
        part = rng.below(10_000),
        size = size,
        ratio = ratio,
        ver = rng.hex(20),
        req = rng.hex(16).to_uppercase(),
        id = id,
    )
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    // an NDJSON file instead of the generated events (its first EVENTS lines)
    let file = args
        .next_if(|a| a.parse::<usize>().is_err())
        .map(std::fs::read_to_string)
        .transpose()
        .unwrap_or_else(|e| {
            eprintln!("cannot read the events file: {e}");
            std::process::exit(2)
        });
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let passes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let index = args.next().as_deref() == Some("index");
    let mut rng = Rng(0x7261_696c_7365_616c);
    let events: Vec<String> = match &file {
        Some(text) => text.lines().take(count).map(str::to_owned).collect(),
        None => (0..count).map(|_| event(&mut rng)).collect(),
    };
    let count = events.len();
    let bytes: usize = events.iter().map(String::len).sum();
    let receipt = Receipt {
        received_at: "2026-01-01T12:00:00.123Z",
        peer: "unix:uid=1000,pid=4242",
        agent: None,
    }
    .canonical();
    let ctx = EventContext {
        account_id: "111122223333",
        region: "us-east-1",
        max_event_bytes: 262_144,
        receipt: Some(&receipt),
        received_at_secs: 1_767_268_800,
        index,
    };
    let mut out = Vec::with_capacity(4096);
    // warm-up pass, also checks every event is accepted
    for e in &events {
        out.clear();
        if let Err(rej) = process_event(e.as_bytes(), &ctx, &mut out) {
            eprintln!(
                "synthetic event rejected: {}: {}",
                rej.code.as_str(),
                rej.message
            );
            std::process::exit(1);
        }
    }
    let start = Instant::now();
    let mut written = 0usize;
    for _ in 0..passes {
        for e in &events {
            out.clear();
            let _ = process_event(e.as_bytes(), &ctx, &mut out);
            written += out.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let total = (bytes * passes) as f64;
    println!(
        "process_event: {} events x {passes} passes, avg {:.0} B in, {:.0} B out: {:.1} MB/s, {:.0} events/s",
        count,
        bytes as f64 / count as f64,
        written as f64 / (count * passes) as f64,
        total / secs / 1e6,
        (count * passes) as f64 / secs,
    );
}
