//! Which telemetry windows count: a sliding anti-replay window per device (as IPsec keeps per
//! security association), so every replica sharing the fleet store counts each window of a
//! device once, whichever replica a shared MQTT subscription handed it to, and in whatever
//! order two replicas commit neighbouring windows.
//!
//! Agents number their windows in order and persist the counter; a QoS 1 redelivery or a
//! store-and-forward replay repeats a number. The state is the highest number counted and a
//! mask of which of the [`SPAN`] numbers below it were counted: one row per device, however
//! long the fleet runs.

/// How far below a device's highest counted window a window may still arrive and count.
/// Windows further back are refused as stale: agents replay their spool oldest first, so a
/// window 64 numbers behind has been sent before, long ago.
pub const SPAN: u64 = 64;

/// What has been counted of one device's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayWindow {
    /// The highest window number counted; `None` before the first.
    pub highest: Option<u64>,
    /// Bit `i` set: window `highest - 1 - i` was counted.
    pub below: u64,
}

/// Why a window was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This number was counted before (redelivery, replay, or another replica).
    Duplicate,
    /// More than [`SPAN`] numbers behind the highest counted: cannot be told apart from a
    /// duplicate any more.
    Stale,
}

impl ReplayWindow {
    /// Claims window `seq`: `Ok` with the new state when it counts now.
    pub fn claim(self, seq: u64) -> Result<ReplayWindow, Refusal> {
        let Some(highest) = self.highest else {
            return Ok(ReplayWindow {
                highest: Some(seq),
                below: 0,
            });
        };
        if seq > highest {
            let shift = seq - highest;
            // the old highest becomes bit shift-1; everything moves up by `shift`
            let below = if shift > SPAN {
                0
            } else {
                let moved = if shift == SPAN {
                    0
                } else {
                    self.below << shift
                };
                moved | 1 << (shift - 1)
            };
            return Ok(ReplayWindow {
                highest: Some(seq),
                below,
            });
        }
        if seq == highest {
            return Err(Refusal::Duplicate);
        }
        let back = highest - seq;
        if back > SPAN {
            return Err(Refusal::Stale);
        }
        let bit = 1u64 << (back - 1);
        if self.below & bit != 0 {
            return Err(Refusal::Duplicate);
        }
        Ok(ReplayWindow {
            highest: Some(highest),
            below: self.below | bit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_all(seqs: &[u64]) -> (ReplayWindow, Vec<Result<(), Refusal>>) {
        let mut state = ReplayWindow::default();
        let results = seqs
            .iter()
            .map(|seq| {
                state.claim(*seq).map(|next| {
                    state = next;
                })
            })
            .collect();
        (state, results)
    }

    #[test]
    fn in_order_windows_count_once_each() {
        let (state, results) = claim_all(&[1, 2, 3, 3, 2]);
        assert_eq!(
            results,
            [
                Ok(()),
                Ok(()),
                Ok(()),
                Err(Refusal::Duplicate),
                Err(Refusal::Duplicate)
            ]
        );
        assert_eq!(state.highest, Some(3));
        assert_eq!(state.below, 0b11);
    }

    #[test]
    fn a_window_committed_after_a_later_one_still_counts() {
        // two replicas: the one holding 5 commits before the one holding 4
        let (_, results) = claim_all(&[3, 5, 4, 4]);
        assert_eq!(results, [Ok(()), Ok(()), Ok(()), Err(Refusal::Duplicate)]);
    }

    #[test]
    fn gaps_stay_claimable_until_they_fall_out_of_the_span() {
        let (state, results) = claim_all(&[10, 10 + SPAN, 11, 11, 9]);
        assert_eq!(
            results,
            [
                Ok(()),
                Ok(()),
                Ok(()),
                Err(Refusal::Duplicate),
                Err(Refusal::Stale)
            ]
        );
        // 10 sits at the far end of the span, 11 next to it
        assert_eq!(state.below, 1 << (SPAN - 1) | 1 << (SPAN - 2));
        let (_, results) = claim_all(&[10, 11 + SPAN, 10]);
        assert_eq!(results[2], Err(Refusal::Stale));
    }

    #[test]
    fn every_number_counts_exactly_once_in_any_order_within_the_span() {
        // a deterministic shuffle of 0..200 in blocks of 40, each seen twice
        let mut seqs: Vec<u64> = Vec::new();
        for block in 0..5u64 {
            let mut part: Vec<u64> = (block * 40..block * 40 + 40).collect();
            part.reverse();
            part.rotate_left((block as usize * 7) % 40);
            seqs.extend(&part);
            seqs.extend(part.iter().rev());
        }
        let (_, results) = claim_all(&seqs);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 200);
    }
}
