use super::*;

fn policy() -> GapPolicy {
    GapPolicy {
        hold: true,
        step: 1,
        concurrent: true,
        grace: Duration::from_secs(1),
        hold_cap: Duration::from_secs(30),
    }
}

fn rows(ids: &[i128]) -> Vec<i128> {
    ids.to_vec()
}

fn writers(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

const AT: fn(i128) -> Cursor = Cursor::At;

#[test]
fn contiguous_rows_pass_at_once() {
    let mut gaps = Gaps::new(policy());
    let v = gaps.judge(AT(10), &rows(&[11, 12, 13]), None, Instant::now());
    assert_eq!(
        v,
        Verdict {
            emit: 3,
            head: Some(AT(13)),
            ..Verdict::default()
        }
    );
}

#[test]
fn rows_after_a_gap_wait_for_its_writers_and_the_grace_window() {
    let t0 = Instant::now();
    let mut gaps = Gaps::new(policy());
    let read = rows(&[11, 13, 14]);
    let v = gaps.judge(AT(10), &read, None, t0);
    assert_eq!(
        (v.emit, v.head, v.holding, v.probe),
        (1, Some(AT(11)), true, Some(Probe::Record))
    );
    gaps.record_writers(Some(&writers(&["w1", "w2"])), AT(14));

    // Before the grace window: hold, ask nothing.
    let v = gaps.judge(AT(11), &read[1..], None, t0 + Duration::from_millis(500));
    assert_eq!((v.emit, v.holding, v.probe), (0, true, None));

    // After it, ask whether the writers are alive; one still is.
    let later = t0 + Duration::from_millis(1100);
    let v = gaps.judge(AT(11), &read[1..], None, later);
    assert_eq!((v.emit, v.probe), (0, Some(Probe::Settle)));
    gaps.settle(Some(&writers(&["w2", "w9"])), later);
    let v = gaps.judge(AT(11), &read[1..], None, later);
    assert_eq!(v.emit, 0, "w2 may still commit id 12");

    // New writers do not matter; once w1 and w2 are gone the gap settles
    // and the next read passes over what is still missing.
    gaps.settle(Some(&writers(&["w9"])), later);
    let v = gaps.judge(AT(11), &read[1..], None, later);
    assert_eq!(
        (v.emit, v.head, v.passed.clone(), v.holding),
        (2, Some(AT(14)), vec![(12, 12)], false)
    );
}

#[test]
fn a_filled_gap_releases_the_rows_behind_it() {
    let t0 = Instant::now();
    let mut gaps = Gaps::new(policy());
    gaps.judge(AT(10), &rows(&[11, 13]), None, t0);
    gaps.record_writers(Some(&writers(&["w1"])), AT(13));
    let v = gaps.judge(
        AT(11),
        &rows(&[12, 13, 14]),
        None,
        t0 + Duration::from_millis(10),
    );
    assert_eq!((v.emit, v.head, v.passed), (3, Some(AT(14)), vec![]));
    assert_eq!(gaps.oldest(), None, "no gap left open");
}

#[test]
fn one_record_covers_every_gap_seen_at_once() {
    let t0 = Instant::now();
    let mut gaps = Gaps::new(policy());
    let read = rows(&[12, 14, 16]);
    gaps.judge(AT(10), &read, None, t0);
    gaps.record_writers(Some(&writers(&[])), Cursor::Start);
    let later = t0 + Duration::from_secs(1);
    gaps.judge(AT(10), &read, None, later);
    gaps.settle(Some(&writers(&[])), later);
    let v = gaps.judge(AT(10), &read, None, later);
    assert_eq!((v.emit, v.passed), (3, vec![(11, 11), (13, 13), (15, 15)]));
}

#[test]
fn without_writer_information_time_alone_settles() {
    let t0 = Instant::now();
    let mut gaps = Gaps::new(policy());
    let read = rows(&[12]);
    gaps.judge(AT(10), &read, None, t0);
    gaps.record_writers(None, AT(12));
    gaps.settle(None, t0 + Duration::from_millis(999));
    assert_eq!(
        gaps.judge(AT(10), &read, None, t0 + Duration::from_millis(999))
            .emit,
        0
    );
    gaps.settle(None, t0 + Duration::from_secs(1));
    assert_eq!(
        gaps.judge(AT(10), &read, None, t0 + Duration::from_secs(1))
            .emit,
        1
    );
}

#[test]
fn the_hold_cap_passes_over_a_gap_whose_writer_never_ends() {
    let t0 = Instant::now();
    let mut gaps = Gaps::new(policy());
    let read = rows(&[12, 13]);
    gaps.judge(AT(10), &read, None, t0);
    gaps.record_writers(Some(&writers(&["idle in transaction"])), AT(13));
    gaps.settle(
        Some(&writers(&["idle in transaction"])),
        t0 + Duration::from_secs(29),
    );
    assert_eq!(
        gaps.judge(AT(10), &read, None, t0 + Duration::from_secs(29))
            .emit,
        0
    );
    let v = gaps.judge(AT(10), &read, None, t0 + Duration::from_secs(30));
    assert_eq!(
        (v.emit, v.capped, v.passed),
        (2, vec![(AT(10), 12)], vec![(11, 11)])
    );
}

#[test]
fn the_watermark_bounds_what_is_published_and_settles_gaps_below_it() {
    let t0 = Instant::now();
    let mut gaps = Gaps::new(policy());
    let read = rows(&[12, 13, 15, 16]);
    let v = gaps.judge(AT(10), &read, Some(13), t0);
    assert_eq!(
        (v.emit, v.head, v.passed.clone(), v.holding, v.probe),
        (2, Some(AT(13)), vec![(11, 11)], true, None)
    );
    let v = gaps.judge(AT(13), &read[2..], Some(16), t0);
    assert_eq!(
        (v.emit, v.head, v.passed),
        (2, Some(AT(16)), vec![(14, 14)])
    );
}

#[test]
fn the_step_of_the_sequence_is_not_a_gap() {
    let mut gaps = Gaps::new(GapPolicy {
        step: 5,
        ..policy()
    });
    let v = gaps.judge(AT(3), &rows(&[8, 13, 18]), None, Instant::now());
    assert_eq!((v.emit, v.holding), (3, false));
}

#[test]
fn the_first_row_of_an_empty_feed_waits_like_a_gap() {
    let t0 = Instant::now();
    let mut gaps = Gaps::new(policy());
    let v = gaps.judge(Cursor::Start, &rows(&[1, 2]), None, t0);
    assert_eq!((v.emit, v.probe), (0, Some(Probe::Record)));
    gaps.record_writers(Some(&writers(&[])), Cursor::Start);
    gaps.settle(Some(&writers(&[])), t0 + Duration::from_secs(1));
    let v = gaps.judge(
        Cursor::Start,
        &rows(&[1, 2]),
        None,
        t0 + Duration::from_secs(1),
    );
    assert_eq!(
        (v.emit, v.passed),
        (2, vec![]),
        "nothing below the first row is tracked"
    );
}

#[test]
fn sqlite_and_ignore_mode_never_hold() {
    for policy in [
        GapPolicy {
            concurrent: false,
            ..policy()
        },
        GapPolicy {
            hold: false,
            ..policy()
        },
    ] {
        let mut gaps = Gaps::new(policy);
        let v = gaps.judge(AT(10), &rows(&[12, 20]), None, Instant::now());
        assert_eq!((v.emit, v.holding), (2, false));
    }
}

#[test]
fn passed_over_ids_are_forgotten_after_the_window_and_found_once() {
    let t0 = Instant::now();
    let mut passed = PassedOver::default();
    passed.add(&[(5, 9), (20, 20)], t0);
    passed.add(&[(30, 31)], t0 + Duration::from_secs(100));
    passed.found(&[6, 9, 20]);
    assert_eq!(
        passed.current(Duration::from_secs(300), t0 + Duration::from_secs(10)),
        vec![(5, 5), (7, 8), (30, 31)]
    );
    assert_eq!(
        passed.current(Duration::from_secs(300), t0 + Duration::from_secs(301)),
        vec![(30, 31)]
    );
}

#[test]
fn nearby_ranges_share_a_span() {
    assert_eq!(
        PassedOver::spans(&[(40, 40), (5, 5), (7, 9), (2000, 5000), (12, 12)], 100),
        vec![(5, 40), (2000, 5000)]
    );
}

#[test]
fn one_settling_releases_everything_visible_when_the_writers_were_listed() {
    let t0 = Instant::now();
    let mut gaps = Gaps::new(policy());
    // A full batch ends at 13, but ids up to 30 were visible when the
    // writers were listed.
    gaps.judge(AT(10), &rows(&[12, 13]), None, t0);
    gaps.record_writers(Some(&writers(&["w1"])), AT(30));
    let later = t0 + Duration::from_secs(1);
    gaps.settle(Some(&writers(&[])), later);
    gaps.judge(AT(10), &rows(&[12, 13]), None, later);
    let v = gaps.judge(AT(13), &rows(&[15, 17, 30, 32]), None, later);
    assert_eq!(
        (v.emit, v.head),
        (3, Some(AT(30))),
        "gaps up to 30 were covered; 31 is new"
    );
    assert_eq!(v.probe, Some(Probe::Record));
}
