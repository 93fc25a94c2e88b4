//! Who may see which rows: real signed tokens (HS256 and RS256), refusals
//! with the right status, claim rules that clients cannot widen on any
//! endpoint, and streams that end when their token expires.

use crate::common::auth::*;
use crate::common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn tokens_are_verified_and_refusals_say_why() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = rules(&db.url, &t)
        .auth("secret", SECRET)
        .auth("audience", "chat")
        .auth("leeway", "0s")
        .start()
        .await;
    let url = format!("{}/events/messages", server.url);
    let good = hs256(json!({"sub": "u1", "aud": "chat", "room_ids": [1], "exp": now() + 600}));

    // Accepted from a header, the query string or a cookie.
    assert_eq!(get(&url, Some(&good), None).await.0, 200);
    assert_eq!(
        get(&format!("{url}?access_token={good}"), None, None)
            .await
            .0,
        200
    );
    assert_eq!(
        get(&url, None, Some(&format!("other=1; rowcast_token={good}")))
            .await
            .0,
        200
    );

    // Change a signature character away from its end, whose last bits are
    // padding and may not change the decoded bytes.
    let at = good.len() - 10;
    let swapped = if &good[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{swapped}{}", &good[..at], &good[at + 1..]);
    let none = {
        // `alg: none`, unsigned.
        let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64url(
            json!({"sub": "u1", "aud": "chat", "room_ids": [1]})
                .to_string()
                .as_bytes(),
        );
        format!("{header}.{body}.")
    };
    let cases = [
        (None, 401, "unauthorized", "a token is required: send `Authorization: Bearer <token>`, `?access_token=` or the `rowcast_token` cookie"),
        (Some(tampered), 401, "unauthorized", "the token is not valid: bad signature"),
        (Some(none), 401, "unauthorized", "the token is not valid: malformed"),
        (Some(hs256(json!({"aud": "chat", "exp": now() - 10}))), 401, "unauthorized", "the token has expired"),
        (Some(hs256(json!({"aud": "chat", "nbf": now() + 600}))), 401, "unauthorized", "the token is not valid: not valid yet (nbf)"),
        (Some(hs256(json!({"aud": "billing"}))), 401, "unauthorized", "the token is not valid: wrong audience"),
        (Some("not.a.token".to_owned()), 401, "unauthorized", "the token is not valid: malformed"),
        (Some(hs256(json!({"sub": 42, "aud": "chat"}))), 401, "unauthorized", "the token is not valid: the `sub` claim is not a string"),
    ];
    for (token, status, code, detail) in cases {
        let (got, body) = get(&url, token.as_deref(), None).await;
        assert_eq!(
            (got, body["error"].as_str(), body["detail"].as_str()),
            (status, Some(code), Some(detail)),
            "{token:?}"
        );
        if let Some(token) = &token {
            assert!(
                !body.to_string().contains(token.as_str()),
                "the body echoes the token"
            );
        }
    }
    server.stop().await;
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn rs256_public_keys_verify_and_other_algorithms_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = rules(&db.url, &t)
        .auth("public_key_file", public.display().to_string())
        .auth("algorithm", "RS256")
        .start()
        .await;
    let url = format!("{}/events/messages", server.url);
    let claims = json!({"room_ids": [1], "exp": now() + 600});
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let rs256 = encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
    assert_eq!(get(&url, Some(&rs256), None).await.0, 200);
    // An HS256 token signed with the public key as its secret: the classic
    // algorithm confusion, refused.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
    )
    .unwrap();
    let (status, body) = get(&url, Some(&confused), None).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (401, Some("the token is not valid: algorithm not accepted"))
    );
    server.stop().await;
}

#[tokio::test]
async fn claims_bound_every_endpoint_and_cannot_be_widened() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = rules(&db.url, &t).auth("secret", SECRET).start().await;
    let mut rows = Vec::new();
    for room in [1, 2, 3, 1, 3, 2] {
        rows.push((room, db.insert(&t, room, &format!("room {room}")).await));
    }
    let of = |rooms: &[i64]| -> Vec<i64> {
        rows.iter()
            .filter(|r| rooms.contains(&r.0))
            .map(|r| r.1)
            .collect()
    };
    let member = hs256(json!({"sub": "u1", "room_ids": [1, 2], "exp": now() + 600}));
    let base = &server.url;

    // No filter asked: the token's rooms.
    let mut client = Client::connect(
        &format!("{base}/events/messages?after=start&access_token={member}"),
        None,
    )
    .await;
    assert_eq!(ids(&client.take(4).await), of(&[1, 2]));
    // A subset is fine.
    let mut client = Client::connect(
        &format!("{base}/events/messages?after=start&room_id=2&access_token={member}"),
        None,
    )
    .await;
    assert_eq!(ids(&client.take(2).await), of(&[2]));
    // Resuming cannot widen either.
    let mut client = Client::connect(
        &format!("{base}/events/messages?access_token={member}"),
        Some("0"),
    )
    .await;
    assert_eq!(ids(&client.take(4).await), of(&[1, 2]));
    client.expect_quiet(Duration::from_millis(300)).await;

    let forbidden = "`room_id=3` is outside what the token allows";
    for url in [
        format!("{base}/events/messages?room_id=3"),
        format!("{base}/events/messages?room_id=2&room_id=3"),
        format!("{base}/events?feed=messages&room_id=3"),
        format!("{base}/events?feed=messages&messages.room_id=3"),
        format!("{base}/feeds/messages/rows?after=start&room_id=3"),
    ] {
        let (status, body) = get(&url, Some(&member), None).await;
        assert_eq!(
            (status, body["error"].as_str(), body["detail"].as_str()),
            (403, Some("forbidden"), Some(forbidden)),
            "{url}"
        );
    }

    // The JSON endpoint applies the same bound.
    let (status, body) = get(
        &format!("{base}/feeds/messages/rows?after=start"),
        Some(&member),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let got: Vec<i64> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, of(&[1, 2]));

    // A token without the claim reads nothing of that feed.
    let bare = hs256(json!({"sub": "u2"}));
    let (status, body) = get(&format!("{base}/events/messages"), Some(&bare), None).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (
            403,
            Some("the token has no `room_ids` claim, which `room_id` needs")
        )
    );

    // The admin feed: unknown without the role; listed only for admins.
    let (status, body) = get(&format!("{base}/events/audit"), Some(&member), None).await;
    assert_eq!(
        (status, body["error"].as_str(), body["detail"].as_str()),
        (
            404,
            Some("unknown_feed"),
            Some("no feed named `audit`; feeds: messages")
        )
    );
    let (_, listed) = get(&format!("{base}/feeds"), Some(&member), None).await;
    let names: Vec<&str> = listed["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["messages"]);
    let admin = hs256(json!({"role": "admin", "room_ids": [], "exp": now() + 600}));
    assert_eq!(
        get(&format!("{base}/events/audit"), Some(&admin), None)
            .await
            .0,
        200
    );
    let (_, listed) = get(&format!("{base}/feeds"), Some(&admin), None).await;
    assert_eq!(listed["feeds"].as_array().unwrap().len(), 2);
    assert_eq!(get(&format!("{base}/feeds"), None, None).await.0, 401);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = rules(&db.url, &t)
        .auth("secret", SECRET)
        .auth("leeway", "0s")
        .start()
        .await;
    let token = hs256(json!({"room_ids": [1], "exp": now() + 2}));
    let mut client = Client::connect(
        &format!("{}/events/messages?access_token={token}", server.url),
        None,
    )
    .await;
    let id = db.insert(&t, 1, "before expiry").await;
    assert_eq!(ids(&client.take(1).await), [id]);
    client.expect_end(Duration::from_secs(4)).await;
    server.stop().await;
}

#[tokio::test]
async fn cors_preflight_is_answered_for_configured_origins_only() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .set("cors_origins", vec!["https://app.example"])
        .auth("secret", SECRET)
        .feed("messages", &t, |f| f)
        .start()
        .await;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/events/messages", server.url),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header(
                "Access-Control-Request-Headers",
                "authorization,last-event-id",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed_headers.contains("authorization") && allowed_headers.contains("last-event-id"),
        "{allowed_headers}"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    server.stop().await;

    // `*` would let any site read the feeds with its visitors' tokens.
    let err = Rowcast::on(&db)
        .set("cors_origins", vec!["*"])
        .auth("secret", "x")
        .feed("messages", &t, |f| f)
        .try_config()
        .unwrap_err();
    assert!(
        err.starts_with("cors_origins: `*` lets any site read"),
        "{err}"
    );
}

#[tokio::test]
async fn too_many_streams_per_subject_or_address_get_429() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .set("max_streams_per_subject", 2)
        .set("max_streams_per_ip", 3)
        .auth("secret", SECRET)
        .feed("messages", &t, |f| f)
        .start()
        .await;
    let url = format!("{}/events/messages", server.url);
    let token = |sub: &str| hs256(json!({"sub": sub, "exp": now() + 600}));
    let alice = token("alice");
    let first = Client::connect(&format!("{url}?access_token={alice}"), None).await;
    let _second = Client::connect(&format!("{url}?access_token={alice}"), None).await;
    let (status, body) = get(&url, Some(&alice), None).await;
    assert_eq!(
        (status, body["error"].as_str(), body["detail"].as_str()),
        (
            429,
            Some("too_many_streams"),
            Some("this token subject already has 2 open streams, the most allowed")
        )
    );
    // A stream that ends gives its place back.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _third = Client::connect(&format!("{url}?access_token={alice}"), None).await;

    // With bob's, the address has 3 streams open; a fourth, whoever asks,
    // is refused.
    let bob = token("bob");
    let _fourth = Client::connect(&format!("{url}?access_token={bob}"), None).await;
    let (status, body) = get(&url, Some(&token("carol")), None).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (
            429,
            Some("this client address already has 3 open streams, the most allowed")
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn the_sub_claim_limits_a_user_to_their_own_rows() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.table("notifications");
    db.exec(&format!(
        "CREATE TABLE {t} (id bigserial PRIMARY KEY, user_id text NOT NULL, body text NOT NULL)"
    ))
    .await;
    let server = Rowcast::on(&db)
        .auth("secret", SECRET)
        .feed("notifications", &t, |f| {
            f.filter_columns(["user_id"]).auth_filter("user_id", "sub")
        })
        .start()
        .await;
    for user in ["u1", "u2", "u1"] {
        db.exec(&format!(
            "INSERT INTO {t} (user_id, body) VALUES ('{user}', 'for {user}')"
        ))
        .await;
    }
    let token = hs256(json!({"sub": "u1", "exp": now() + 600}));
    let url = format!(
        "{}/events/notifications?after=start&access_token={token}",
        server.url
    );
    let mut client = Client::connect(&url, None).await;
    let got = client.take(2).await;
    assert_eq!(ids(&got), [1, 3]);
    assert!(got.iter().all(|e| e.json()["user_id"] == "u1"));
    client.expect_quiet(Duration::from_millis(300)).await;
    let (status, body) = get(&format!("{url}&user_id=u2"), None, None).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("`user_id=u2` is outside what the token allows"))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_configured_issuer_and_audience_must_be_in_the_token() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = rules(&db.url, &t)
        .auth("secret", SECRET)
        .auth("issuer", "https://app.example")
        .auth("audience", "chat")
        .start()
        .await;
    let url = format!("{}/feeds", server.url);
    let exp = now() + 600;
    let good = hs256(json!({"sub": "u1", "iss": "https://app.example", "aud": "chat", "exp": exp}));
    assert_eq!(get(&url, Some(&good), None).await.0, 200);
    let missing = |claim: &str| {
        format!("the token is not valid: missing or malformed `{claim}` claim, which this server requires")
    };
    let cases = [
        (
            json!({"sub": "u1", "aud": "chat", "exp": exp}),
            missing("iss"),
        ),
        (
            json!({"sub": "u1", "iss": "https://app.example", "exp": exp}),
            missing("aud"),
        ),
        // Not a string: once ignored, as if the claim were absent.
        (
            json!({"sub": "u1", "iss": 7, "aud": "chat", "exp": exp}),
            missing("iss"),
        ),
        (
            json!({"sub": "u1", "iss": "https://other.example", "aud": "chat", "exp": exp}),
            "the token is not valid: wrong issuer".to_owned(),
        ),
    ];
    for (claims, detail) in cases {
        assert_eq!(
            get(&url, Some(&hs256(claims.clone())), None).await,
            (401, json!({"error": "unauthorized", "detail": detail})),
            "{claims}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn streams_are_counted_by_a_string_sub_that_every_token_must_carry() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .set("max_streams_per_subject", 3)
        .auth("secret", SECRET)
        .feed("messages", &t, |f| f)
        .start()
        .await;
    let url = format!("{}/events/messages", server.url);
    let exp = now() + 600;
    let refusals = [
        (json!({"sub": 42, "exp": exp}), "the token is not valid: the `sub` claim is not a string"),
        (json!({"exp": exp}), "the token has no `sub` claim: this server limits open streams per subject, so every token needs one"),
    ];
    for (claims, detail) in refusals {
        for url in [url.clone(), format!("{}/feeds", server.url)] {
            assert_eq!(
                get(&url, Some(&hs256(claims.clone())), None).await,
                (401, json!({"error": "unauthorized", "detail": detail})),
                "{url} {claims}"
            );
        }
    }
    let alice = hs256(json!({"sub": "42", "exp": exp}));
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(&format!("{url}?access_token={alice}"), None).await);
    }
    assert_eq!(
        get(&url, Some(&alice), None).await,
        (
            429,
            json!({
                "error": "too_many_streams",
                "detail": "this token subject already has 3 open streams, the most allowed"
            })
        )
    );
    server.stop().await;
}
