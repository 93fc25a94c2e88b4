//! Cursors as clients write them: parsed, printed, checked, composed.

use super::*;

#[test]
fn parses_ids_of_every_range() {
    assert_eq!(Cursor::parse("1042"), Ok(Cursor::At(1042)));
    assert_eq!(Cursor::parse("-5"), Ok(Cursor::At(-5)));
    assert_eq!(
        Cursor::parse("18446744073709551615"),
        Ok(Cursor::At(u64::MAX as i128))
    );
    assert_eq!(Cursor::parse("start"), Ok(Cursor::Start));
    assert_eq!(Cursor::parse(" 7 "), Ok(Cursor::At(7)));
}

#[test]
fn rejects_what_is_not_an_id() {
    for bad in ["", "abc", "1.5", "+3", "1e3", "0x10", "12 3"] {
        assert_eq!(
            Cursor::parse(bad),
            Err(ParseError::NotAnId(bad.trim().to_owned())),
            "{bad:?}"
        );
    }
}

#[test]
fn start_sorts_before_every_id() {
    assert!(Cursor::Start < Cursor::At(i128::MIN));
    assert!(Cursor::At(-1) < Cursor::At(0));
    assert_eq!(Cursor::Start.next_id(), Some(i128::MIN));
    assert_eq!(Cursor::At(i128::MAX).next_id(), None);
}

#[test]
fn composite_round_trips() {
    let orders = Style::Changes { epoch: 0xab };
    let text = format_composite([
        ("messages", Cursor::At(1042).to_string()),
        ("orders", orders.format(change(7, 1_733_100_000_123))),
    ]);
    assert_eq!(text, "messages:1042,orders:1733100000123.000000ab.7");
    assert_eq!(
        parse_composite(&text, 2).unwrap(),
        vec![
            ("messages".to_owned(), "1042".to_owned()),
            ("orders".to_owned(), "1733100000123.000000ab.7".to_owned())
        ]
    );
}

#[test]
fn changes_cursors_keep_their_number_only_in_their_own_run() {
    let style = Style::Changes { epoch: 0x5f3a9c1e };
    let cursor = change(42, 1_733_100_000_123);
    assert_eq!(style.format(cursor), "1733100000123.5f3a9c1e.42");
    assert_eq!(style.parse("1733100000123.5f3a9c1e.42", None), Ok(cursor));
    assert_eq!(unchange(cursor), (42, 1_733_100_000_123));
    // Another run's event: only its time counts.
    assert_eq!(
        style.parse("1733100000123.00000001.42", None),
        Ok(change(0, 1_733_100_000_123))
    );
    assert_eq!(style.parse("0", None), Ok(change(0, 0)));
    assert!(change(1, 0) > change(0, i64::MAX));
    for bad in [
        "", "12", "1.2", "a.b.c", "1.zz.3", "-1.ab.3", "1.ab.3.4", "1.ab.+3",
    ] {
        assert_eq!(
            style.parse(bad, None),
            Err(ParseError::NotAChange(bad.to_owned())),
            "{bad:?}"
        );
    }
    assert_eq!(
        Style::Ids(IdRange::Signed).parse("1.ab.3", None),
        Err(ParseError::NotAnId("1.ab.3".to_owned()))
    );
}

#[test]
fn composite_rejects_malformed_text() {
    assert_eq!(
        parse_composite("1042", 2),
        Err(ParseError::NotComposite("1042".into()))
    );
    assert_eq!(
        parse_composite(":5", 2),
        Err(ParseError::NotComposite(":5".into()))
    );
    assert_eq!(
        parse_composite("a:1,a:2", 2),
        Err(ParseError::RepeatedFeed("a".into()))
    );
}

#[test]
fn composite_has_at_most_one_pair_per_feed() {
    assert_eq!(
        parse_composite("a:1,b:2,c:3", 2),
        Err(ParseError::TooManyParts { parts: 3 })
    );
    // Refused by the count alone, however malformed the pairs are.
    assert_eq!(
        parse_composite(",,,", 3),
        Err(ParseError::TooManyParts { parts: 4 })
    );
    let many = vec!["a:1"; 40_000].join(",");
    assert_eq!(
        parse_composite(&many, 3),
        Err(ParseError::TooManyParts { parts: 40_000 })
    );
    assert_eq!(
        ParseError::TooManyParts { parts: 40_000 }.to_string(),
        "the cursor has 40000 `feed:id` pairs, more than there are feeds: expected at most one pair per feed"
    );
    assert_eq!(parse_composite("a:1,b:2", 2).map(|p| p.len()), Ok(2));
}

#[test]
fn composite_finds_a_repeat_among_many_feeds() {
    // As many feeds as pairs: every pair is parsed and checked.
    let mut names: Vec<String> = (0..20_000).map(|i| format!("f{i}:{i}")).collect();
    assert_eq!(
        parse_composite(&names.join(","), names.len()).map(|p| p.len()),
        Ok(20_000)
    );
    names.push("f7:1".to_owned());
    assert_eq!(
        parse_composite(&names.join(","), names.len()),
        Err(ParseError::RepeatedFeed("f7".into()))
    );
}

#[test]
fn ids_must_fit_the_cursor_column() {
    let above_u64 = Cursor::At(i128::from(u64::MAX) + 1);
    assert_eq!(
        IdRange::Unsigned.check(above_u64, None),
        Err(ParseError::OutOfRange {
            id: i128::from(u64::MAX) + 1,
            feed: None,
            min: 0,
            max: u64::MAX.into()
        })
    );
    assert_eq!(
        IdRange::Unsigned.check(above_u64, None).unwrap_err().to_string(),
        "`18446744073709551616` is outside the ids of this feed: expected an integer from 0 to 18446744073709551615 or `start`"
    );
    assert_eq!(
        IdRange::Signed
            .check(Cursor::At(i64::MAX as i128 + 1), Some("orders"))
            .unwrap_err()
            .to_string(),
        "`9223372036854775808` is outside the ids of feed `orders`: expected an integer from -9223372036854775808 to 9223372036854775807 or `start`"
    );
    assert!(IdRange::Unsigned.check(Cursor::At(-1), None).is_err());
    for (range, ok) in [
        (IdRange::Signed, [i64::MIN.into(), -1, 0, i64::MAX.into()]),
        (IdRange::Unsigned, [0, 1, i64::MAX.into(), u64::MAX.into()]),
        // Exact mode packs `(txid, id)` far above u64.
        (IdRange::Packed, [0, u64::MAX.into(), 1 << 100, i128::MAX]),
    ] {
        for id in ok {
            assert_eq!(range.check(Cursor::At(id), None), Ok(Cursor::At(id)));
        }
        assert_eq!(range.check(Cursor::Start, None), Ok(Cursor::Start));
    }
    assert!(IdRange::Packed.check(Cursor::At(-1), None).is_err());
}

#[test]
fn redis_stream_ids_round_trip_and_sort_like_redis() {
    let style = Style::RedisStream;
    let id = stream_id(1_733_100_000_000, 5);
    assert_eq!(style.format(id), "1733100000000-5");
    assert_eq!(style.parse("1733100000000-5", None), Ok(id));
    assert_eq!(style.parse(" 1733100000000-5 ", None), Ok(id));
    assert_eq!(
        style.parse("1733100000000", None),
        Ok(stream_id(1_733_100_000_000, 0))
    );
    assert_eq!(style.parse("start", None), Ok(Cursor::Start));
    assert_eq!(style.format(Cursor::Start), "0-0");
    assert_eq!(unstream_id(id), (1_733_100_000_000, 5));
    let top = stream_id(i64::MAX as u64, u64::MAX);
    assert_eq!(style.format(top), format!("{}-{}", i64::MAX, u64::MAX));
    assert_eq!(
        style.parse(&format!("{}-{}", i64::MAX, u64::MAX), None),
        Ok(top)
    );
    let beyond = format!("{}-0", i64::MAX as u64 + 1);
    assert_eq!(
        style.parse(&beyond, None),
        Err(ParseError::NotAStreamId(beyond.clone()))
    );
    // The sequence orders entries of one millisecond; the millisecond
    // comes first.
    assert!(stream_id(1, u64::MAX) < stream_id(2, 0));
    assert!(stream_id(7, 1) < stream_id(7, 2));
    assert!(Cursor::Start < stream_id(0, 1));
    for bad in [
        "",
        "-",
        "1-",
        "-1",
        "1-2-3",
        "a-1",
        "1-b",
        "+1-2",
        "1.5",
        "99999999999999999999-1",
    ] {
        assert_eq!(
            style.parse(bad, None),
            Err(ParseError::NotAStreamId(bad.trim().to_owned())),
            "{bad:?}"
        );
    }
    assert_eq!(
        style.parse("x", None).unwrap_err().to_string(),
        "`x` is not a Redis stream id: expected `<milliseconds>-<sequence>` (e.g. `1733100000000-5`), `<milliseconds>` or `start`"
    );
}

#[test]
fn live_feeds_take_any_cursor_and_resume_none() {
    assert!(!Style::Live.resumable());
    assert!(Style::RedisStream.resumable());
    assert!(Style::Ids(IdRange::Signed).resumable());
    assert_eq!(Style::Live.parse("whatever", None), Ok(Cursor::Start));
}

#[test]
fn long_cursor_text_is_quoted_cut() {
    let long = "9".repeat(60_000) + "x";
    assert_eq!(
        Cursor::parse(&long).unwrap_err().to_string(),
        format!(
            "`{}…` (60001 characters) is not a row id: expected an integer or `start`",
            "9".repeat(64)
        )
    );
}
