//! Streaming behaviour against every database: exact rows in order, resume,
//! filters, several feeds on one connection, hostile values.

use crate::common::*;
use std::time::Duration;

each_db!(
    live_rows_arrive_in_order_as_plain_messages,
    resume_with_last_event_id_or_after,
    filters_select_rows_by_column_value,
    several_feeds_resume_with_one_id,
    hostile_text_arrives_byte_exact,
);

async fn live_rows_arrive_in_order_as_plain_messages(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    db.insert_many(&t, 1, 2).await; // before start: not sent to a live client
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;
    let headers = &client.response_headers;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none());

    let mut expected = Vec::new();
    for (i, body) in ["one", "two", "three", "four", "five"].iter().enumerate() {
        expected.push(db.insert(&t, i as i64 % 2, body).await);
    }
    let events = client.take(5).await;
    assert_eq!(ids(&events), expected);
    assert_eq!(bodies(&events), ["one", "two", "three", "four", "five"]);
    for (event, id) in events.iter().zip(&expected) {
        // No `event:` line, so the browser's `onmessage` fires.
        assert_eq!(event.event, "message");
        let row = event.json();
        assert_eq!(row["id"], serde_json::json!(id));
        assert_eq!(row.as_object().unwrap().len(), 3, "every column: {row}");
    }
    client.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

async fn resume_with_last_event_id_or_after(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let first = db.insert_many(&t, 1, 3).await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let url = format!("{}/events/messages", server.url);

    // A first connection with ?after= gets what came after it, then live rows.
    let mut client = Client::connect(&format!("{url}?after={}", first[0]), None).await;
    assert_eq!(ids(&client.take(2).await), &first[1..]);
    let fourth = db.insert(&t, 1, "four").await;
    let got = client.take(1).await;
    assert_eq!(ids(&got), [fourth]);
    drop(client);

    // Rows written while disconnected arrive once on reconnect; Last-Event-ID
    // wins over a stale ?after=.
    let missed = db.insert_many(&t, 1, 3).await;
    let mut client = Client::connect(&format!("{url}?after={}", first[0]), Some(&got[0].id)).await;
    assert_eq!(ids(&client.take(3).await), missed);
    client.expect_quiet(Duration::from_millis(300)).await;
    let live = db.insert(&t, 1, "live").await;
    assert_eq!(ids(&client.take(1).await), [live]);

    // `start` replays the whole table.
    let mut all = first.clone();
    all.push(fourth);
    all.extend(&missed);
    all.push(live);
    let mut client = Client::connect(&format!("{url}?after=start"), None).await;
    assert_eq!(ids(&client.take(all.len()).await), all);
    server.stop().await;
}

async fn filters_select_rows_by_column_value(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let url = format!("{}/events/messages", server.url);
    let mut room2 = Client::connect(&format!("{url}?room_id=2"), None).await;
    let mut rooms13 = Client::connect(&format!("{url}?room_id=1&room_id=3"), None).await;
    let mut ids_by_room: [Vec<i64>; 4] = Default::default();
    for i in 0..12 {
        let room = i % 3 + 1;
        ids_by_room[room as usize].push(db.insert(&t, room, &format!("r{room}")).await);
    }
    let got = room2.take(4).await;
    assert_eq!(ids(&got), ids_by_room[2]);
    assert!(bodies(&got).iter().all(|b| b == "r2"));
    let mut expected: Vec<i64> = ids_by_room[1]
        .iter()
        .chain(&ids_by_room[3])
        .copied()
        .collect();
    expected.sort();
    assert_eq!(ids(&rooms13.take(8).await), expected);
    room2.expect_quiet(Duration::from_millis(200)).await;
    rooms13.expect_quiet(Duration::from_millis(200)).await;
    server.stop().await;
}

async fn several_feeds_resume_with_one_id(kind: Kind) {
    let db = TestDb::new(kind).await;
    let a = db.messages("a").await;
    let b = db.messages("b").await;
    let server = Rowcast::on(&db)
        .feed("alpha", &a, |f| f)
        .feed("beta", &b, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let url = format!("{}/events?feed=alpha&feed=beta", server.url);
    let mut client = Client::connect(&url, None).await;
    let a1 = db.insert(&a, 1, "a1").await;
    let got = client.take(1).await;
    let b1 = db.insert(&b, 1, "b1").await;
    let got = [got, client.take(1).await].concat();
    assert_eq!(
        got.iter()
            .map(|e| (e.event.as_str(), e.json()["id"].as_i64().unwrap()))
            .collect::<Vec<_>>(),
        [("alpha", a1), ("beta", b1)]
    );
    assert_eq!(got[1].id, format!("alpha:{a1},beta:{b1}"));
    drop(client);

    let a2 = db.insert(&a, 1, "a2").await;
    let b2 = db.insert(&b, 1, "b2").await;
    let a3 = db.insert(&a, 1, "a3").await;
    let mut client = Client::connect(&url, Some(&got[1].id)).await;
    let resumed = client.take(3).await;
    let of = |feed: &str| -> Vec<i64> {
        resumed
            .iter()
            .filter(|e| e.event == feed)
            .map(|e| e.json()["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(of("alpha"), [a2, a3]);
    assert_eq!(of("beta"), [b2]);
    client.expect_quiet(Duration::from_millis(300)).await;

    // A bare filter applies to every feed that has the column; only beta has it.
    let mut filtered = Client::connect(&format!("{url}&room_id=7"), None).await;
    db.insert(&b, 1, "b other room").await;
    let a4 = db.insert(&a, 1, "a4").await;
    let b7 = db.insert(&b, 7, "b7").await;
    let got = filtered.take(2).await;
    let mut pairs: Vec<(String, i64)> = got
        .iter()
        .map(|e| (e.event.clone(), e.json()["id"].as_i64().unwrap()))
        .collect();
    pairs.sort();
    assert_eq!(pairs, [("alpha".to_owned(), a4), ("beta".to_owned(), b7)]);
    server.stop().await;
}

async fn hostile_text_arrives_byte_exact(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;
    let huge = format!("{}end", "x".repeat(1 << 20));
    let mut values: Vec<String> = vec![
        "line one\nline two".into(),
        "carriage\rreturn\r\nand crlf".into(),
        "\"double\" and 'single' quotes".into(),
        "back\\slash \\n not a newline".into(),
        "emoji 🎉 and family 👩‍👩‍👧 and ünïcödé".into(),
        "\n\ndata: forged\nid: 999999\n\n".into(),
        "tab\tcontrol\u{1}\u{1f}".into(),
        huge,
        String::new(),
    ];
    if kind != Kind::Postgres {
        // Postgres text cannot hold NUL; the others can.
        values.push("nul\0inside".into());
    }
    for value in &values {
        db.insert(&t, 1, value).await;
    }
    let got = client.take(values.len()).await;
    assert_eq!(bodies(&got), values);
    server.stop().await;
}
