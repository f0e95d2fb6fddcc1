//! How long a peer takes to answer this node's nacks, measured: the wait before the next nack
//! round follows it, not a fixed fraction of the tick.
//!
//! A round whose nack or answer was lost used to wait a resync interval (a quarter of the
//! tick, 25 ms at the default 100 ms) before asking again, whatever the network: on a LAN
//! whose round trip is well under a millisecond, three unlucky rounds cost 75 ms. The wait is
//! now an estimate of the round trip, kept as TCP keeps its retransmission timeout (RFC 6298:
//! a smoothed mean plus four times the mean deviation), and bounded by the resync interval
//! above and the nack window below: a peer does not repair the same datagram again within the
//! nack window (the round's other nacks asked for it too), so a nack sooner would be wasted and
//! the round spent. A sample is the time from a nack to the first answer from the peer that
//! covers what it asked for (a repair or parity of those sequence numbers), and only for a
//! nack sent while none was pending (Karn's rule: the answer to a nack sent again may be the
//! earlier one's). Until a sample comes, the resync interval.
//!
//! Only a big table's rounds are timed so (`request.rs`): there only rounds that bring nothing
//! count towards reconciling by digests. A small table's rounds each count towards fetching it
//! whole, and stay a resync interval apart, time in which the other receivers' parity often
//! brings what this node lacks.

use std::time::{Duration, Instant};

use crate::cluster::wire::BLOCK;

/// A nack not answered yet: when it went, the span of sequence numbers it asked for, and
/// whether it may be sampled (no earlier nack was pending).
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Instant,
    lo: u64,
    hi: u64,
    fresh: bool,
}

/// One peer's answers to this node's nacks, timed (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::cluster::protocol) struct RoundTrip {
    probe: Option<Probe>,
    /// The smoothed round trip, and its mean deviation.
    mean: Option<Duration>,
    dev: Duration,
    /// When the last answer of the peer's came (to this node's nack or another's).
    heard: Option<Instant>,
}

impl RoundTrip {
    /// This node nacked the peer's sequence numbers `gaps` (inclusive ranges) at `now`.
    pub(in crate::cluster::protocol) fn asked(
        &mut self,
        now: Instant,
        gaps: impl IntoIterator<Item = (u64, u64)>,
    ) {
        let Some((lo, hi)) = gaps
            .into_iter()
            .reduce(|(lo, hi), (l, h)| (lo.min(l), hi.max(h)))
        else {
            return;
        };
        let fresh = self.probe.is_none();
        self.probe = Some(Probe {
            at: now,
            lo,
            hi,
            fresh,
        });
    }

    /// An answer from the peer came at `now`: a repair of its sequence numbers `lo..=hi`.
    pub(in crate::cluster::protocol) fn answered(&mut self, now: Instant, lo: u64, hi: u64) {
        self.heard = Some(now);
        let Some(p) = self.probe.filter(|p| lo <= p.hi && p.lo <= hi) else {
            return;
        };
        self.probe = None;
        if p.fresh {
            self.sample(now.saturating_duration_since(p.at));
        }
    }

    /// Parity of the peer's block from `lo` came at `now` (it repairs any of the block).
    pub(in crate::cluster::protocol) fn answered_block(&mut self, now: Instant, lo: u64) {
        self.answered(now, lo, lo.saturating_add(BLOCK - 1));
    }

    fn sample(&mut self, rtt: Duration) {
        match self.mean {
            None => {
                self.mean = Some(rtt);
                self.dev = rtt / 2;
            }
            Some(m) => {
                let diff = m.abs_diff(rtt);
                self.dev = (self.dev * 3 + diff) / 4;
                self.mean = Some((m * 7 + rtt) / 8);
            }
        }
    }

    /// How long after a nack round the next may follow: the estimate, within `hold..=every`
    /// (the nack window and the resync interval; `every` until a sample came).
    pub(in crate::cluster::protocol) fn wait(&self, hold: Duration, every: Duration) -> Duration {
        self.mean
            .map_or(every, |m| (m + self.dev * 4).clamp(hold.min(every), every))
    }

    /// When a nack round may follow one sent at `last`: a round trip after it, and after the
    /// peer's last answer (it may still be answering: repairs queue behind its bucket and
    /// others' nacks), a resync interval after it at the latest.
    pub(in crate::cluster::protocol) fn next_round(
        &self,
        last: Instant,
        hold: Duration,
        every: Duration,
    ) -> Instant {
        let wait = self.wait(hold, every);
        let quiet = self.heard.map_or(last, |h| h.max(last)) + wait;
        quiet.min(last + every)
    }

    /// The smoothed round trip, at most `window` (`window` until sampled): the random wait
    /// before a later round's nack (the other receivers' nacks of the round have had time to
    /// come), and, on the sender's side, how soon after one later nack another cannot have had
    /// its symbols yet (`parity.rs`).
    pub(in crate::cluster::protocol) fn later_window(&self, window: Duration) -> Duration {
        self.mean.map_or(window, |m| m.min(window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_millis(25);
    const HOLD: Duration = Duration::from_millis(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// An estimator whose one sample is a nack of datagram 1 at `t` answered `rtt` later.
    fn sampled(t: Instant, rtt: Duration) -> RoundTrip {
        let mut r = RoundTrip::default();
        r.asked(t, [(1, 1)]);
        r.answered(t + rtt, 1, 1);
        r
    }

    #[test]
    fn without_a_sample_the_wait_is_the_resync_interval() {
        let mut r = RoundTrip::default();
        assert_eq!(r.wait(HOLD, EVERY), EVERY);
        assert_eq!(r.later_window(ms(10)), ms(10));
        // Asked, never answered: still nothing measured.
        r.asked(Instant::now(), [(5, 7)]);
        assert_eq!(r.wait(HOLD, EVERY), EVERY);
    }

    #[test]
    fn an_answer_to_what_was_asked_sets_the_wait() {
        let t = Instant::now();
        let mut r = RoundTrip::default();
        r.asked(t, [(10, 12), (40, 40)]);
        r.answered(t + ms(4), 40, 40);
        // First sample: mean 4 ms, deviation 2 ms, wait 4 + 8.
        assert_eq!(r.wait(HOLD, EVERY), ms(12));
        assert_eq!(r.later_window(ms(10)), ms(4));
        // Steady 7 ms answers: the deviation decays, the wait comes down towards 7 ms.
        for i in 1..40u64 {
            let at = t + ms(100 * i);
            r.asked(at, [(10, 12)]);
            r.answered(at + ms(7), 11, 11);
        }
        assert!(r.wait(HOLD, EVERY) < ms(8), "{:?}", r.wait(HOLD, EVERY));
        assert!(r.wait(HOLD, EVERY) >= ms(6));
    }

    #[test]
    fn the_wait_stays_within_its_bounds() {
        let t = Instant::now();
        let fast = sampled(t, Duration::from_micros(100));
        assert_eq!(fast.wait(HOLD, EVERY), HOLD);
        let slow = sampled(t, ms(80));
        assert_eq!(slow.wait(HOLD, EVERY), EVERY);
        // A resync interval below the nack window is the wait.
        assert_eq!(fast.wait(HOLD, ms(1)), ms(1));
        // The nack window is the least wait: the peer would not answer sooner.
        let r = sampled(t, ms(3));
        assert_eq!(r.wait(HOLD, EVERY), ms(9));
        assert_eq!(r.wait(ms(10), EVERY), ms(10));
    }

    #[test]
    fn a_round_waits_for_the_peer_to_finish_answering() {
        let t = Instant::now();
        let mut r = sampled(t, ms(3));
        // Timed: 9 ms. A nack at 100 ms, whose answers keep coming (to others' nacks too) until
        // 115 ms: the next round waits 9 ms after the last of them.
        let last = t + ms(100);
        assert_eq!(r.next_round(last, HOLD, EVERY), last + ms(9));
        r.asked(last, [(2, 2)]);
        r.answered(last + ms(12), 70, 70);
        r.answered(last + ms(15), 80, 80);
        assert_eq!(r.next_round(last, HOLD, EVERY), last + ms(24));
        // Never later than a resync interval after the nack.
        r.answered(last + ms(20), 90, 90);
        assert_eq!(r.next_round(last, HOLD, EVERY), last + EVERY);
    }

    #[test]
    fn answers_to_something_else_are_not_samples() {
        let t = Instant::now();
        let mut r = RoundTrip::default();
        r.asked(t, [(10, 12)]);
        // A repair of another receiver's gap, and parity of another block: no sample.
        r.answered(t + ms(1), 13, 20);
        r.answered_block(t + ms(1), 64);
        assert_eq!(r.wait(HOLD, EVERY), EVERY);
        // Parity of the block holding the gap is an answer.
        r.answered_block(t + ms(3), 0);
        assert_eq!(r.wait(HOLD, EVERY), ms(9));
        // Only the first answer of a nack counts.
        r.answered(t + ms(20), 10, 12);
        assert_eq!(r.wait(HOLD, EVERY), ms(9));
    }

    #[test]
    fn a_nack_sent_again_before_its_answer_is_not_sampled() {
        let t = Instant::now();
        let mut r = RoundTrip::default();
        r.asked(t, [(10, 12)]);
        // Lost, or slow: asked again 25 ms later, answered 1 ms after that. The answer may
        // be the first nack's (26 ms) or the second's (1 ms): neither is taken.
        r.asked(t + ms(25), [(10, 12)]);
        r.answered(t + ms(26), 10, 10);
        assert_eq!(r.wait(HOLD, EVERY), EVERY);
        // The next nack, sent with none pending, is sampled.
        r.asked(t + ms(50), [(11, 11)]);
        r.answered(t + ms(52), 11, 11);
        assert_eq!(r.wait(HOLD, EVERY), ms(6));
    }
}
