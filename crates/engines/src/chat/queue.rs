//! The fair queue's decisions, kept free of threads and models so they can be tested alone.
//!
//! Requests wait in arrival order (a bounded FIFO). Up to `max_active` of them are admitted,
//! and the admitted ones take turns: a worker runs one step of one generation (a chunk of
//! its prompt, or one token) and puts it at the back of the rotation. So a long answer only
//! slows the others down, it never blocks them, and a short request admitted behind it
//! finishes in about its own length in turns. Whole-request FIFO would be simpler, but on a
//! one-worker box a single 4,000-token answer would hold every other caller for minutes.

use std::collections::VecDeque;

/// What a worker should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<J, G> {
    /// Admit this waiting request: build its generation and run its first step.
    Start(J),
    /// Run one more step of this generation.
    Step(G),
    /// Nothing to do: wait for a submit or a yield.
    Idle,
}

pub(crate) struct FairQueue<J, G> {
    waiting: VecDeque<J>,
    ready: VecDeque<G>,
    /// Admitted and not finished: in `ready` or being stepped by a worker.
    active: usize,
    max_waiting: usize,
    max_active: usize,
}

impl<J, G> FairQueue<J, G> {
    pub(crate) fn new(max_waiting: usize, max_active: usize) -> FairQueue<J, G> {
        FairQueue {
            waiting: VecDeque::new(),
            ready: VecDeque::new(),
            active: 0,
            max_waiting,
            max_active: max_active.max(1),
        }
    }

    /// Queues a request, or hands it back when `max_waiting` are already waiting.
    pub(crate) fn submit(&mut self, job: J) -> Result<(), J> {
        if self.waiting.len() >= self.max_waiting {
            return Err(job);
        }
        self.waiting.push_back(job);
        Ok(())
    }

    /// Admission comes first so a newcomer's prompt joins the rotation at once; then the
    /// generation that has waited longest for its turn.
    pub(crate) fn next(&mut self) -> Next<J, G> {
        if self.active < self.max_active {
            if let Some(job) = self.waiting.pop_front() {
                self.active += 1;
                return Next::Start(job);
            }
        }
        match self.ready.pop_front() {
            Some(generation) => Next::Step(generation),
            None => Next::Idle,
        }
    }

    /// A step ended and the generation goes on: back of the rotation.
    pub(crate) fn yielded(&mut self, generation: G) {
        self.ready.push_back(generation);
    }

    /// A generation ended (done, cancelled or failed): its place is free.
    pub(crate) fn finished(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn active(&self) -> usize {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a one-worker queue over requests of the given lengths (in steps) until all are
    /// done, and returns the order of the steps taken, as request indices.
    fn schedule(lengths: &[usize], max_active: usize) -> Vec<usize> {
        let mut queue: FairQueue<usize, (usize, usize)> = FairQueue::new(64, max_active);
        for index in 0..lengths.len() {
            queue.submit(index).unwrap();
        }
        let mut steps = Vec::new();
        loop {
            let (index, done) = match queue.next() {
                Next::Start(index) => (index, 0),
                Next::Step(generation) => generation,
                Next::Idle => break,
            };
            steps.push(index);
            if done + 1 == lengths[index] {
                queue.finished();
            } else {
                queue.yielded((index, done + 1));
            }
        }
        steps
    }

    #[test]
    fn admitted_requests_take_turns() {
        assert_eq!(schedule(&[4, 1, 2], 4), vec![0, 1, 2, 0, 2, 0, 0]);
    }

    #[test]
    fn a_long_request_does_not_hold_a_later_short_one() {
        let steps = schedule(&[1000, 3], 2);
        let last_of_short = steps.iter().rposition(|&i| i == 1).unwrap();
        assert!(last_of_short < 6, "{:?}", &steps[..10]);
        assert_eq!(steps.len(), 1003);
    }

    #[test]
    fn beyond_max_active_requests_wait_in_arrival_order() {
        let steps = schedule(&[3, 3, 1, 1], 2);
        // 2 and 3 start only as places free up, 2 before 3, each as soon as there is room.
        assert_eq!(steps, vec![0, 1, 0, 1, 0, 2, 3, 1]);
        let mut queue: FairQueue<usize, usize> = FairQueue::new(64, 1);
        queue.submit(7).unwrap();
        queue.submit(8).unwrap();
        assert_eq!(queue.next(), Next::Start(7));
        assert_eq!(queue.next(), Next::Idle, "8 waits for 7's place");
        assert_eq!((queue.active(), queue.waiting()), (1, 1));
        queue.finished();
        assert_eq!(queue.next(), Next::Start(8));
    }

    #[test]
    fn a_full_queue_hands_the_request_back() {
        let mut queue: FairQueue<u8, ()> = FairQueue::new(2, 1);
        assert_eq!(queue.submit(1), Ok(()));
        assert_eq!(queue.submit(2), Ok(()));
        assert_eq!(queue.submit(3), Err(3));
        assert_eq!(queue.next(), Next::Start(1));
        assert_eq!(queue.submit(3), Ok(()), "admitting one made room");
    }
}
