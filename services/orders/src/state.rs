//! The order state machine, free of storage and transport: which transitions exist, and what an
//! input (a saga event or a command) does to an order in a given state.
//!
//! ```text
//! created → stock_reserved → payment_pending → paid → shipped → delivered
//! created → rejected                (not enough stock)
//! payment_pending → payment_failed  (stock released)
//! created | stock_reserved | payment_pending | paid → cancelled
//! cancelled → refunded              (when it had been paid)
//! ```
//!
//! Saga inputs that no longer apply (a duplicate, or a late event after a cancel) are
//! [`Decision::Ignore`]d; commands that do not apply are [`Decision::Refuse`]d.

use serde::{Deserialize, Serialize};
use shopmesh_proto::shopmesh::orders::v1::OrderStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    StockReserved,
    PaymentPending,
    Paid,
    Shipped,
    Delivered,
    Rejected,
    PaymentFailed,
    Cancelled,
    Refunded,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Created,
        Status::StockReserved,
        Status::PaymentPending,
        Status::Paid,
        Status::Shipped,
        Status::Delivered,
        Status::Rejected,
        Status::PaymentFailed,
        Status::Cancelled,
        Status::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::StockReserved => "stock_reserved",
            Status::PaymentPending => "payment_pending",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
            Status::Rejected => "rejected",
            Status::PaymentFailed => "payment_failed",
            Status::Cancelled => "cancelled",
            Status::Refunded => "refunded",
        }
    }

    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
    }

    pub fn proto(self) -> OrderStatus {
        match self {
            Status::Created => OrderStatus::Created,
            Status::StockReserved => OrderStatus::StockReserved,
            Status::PaymentPending => OrderStatus::PaymentPending,
            Status::Paid => OrderStatus::Paid,
            Status::Shipped => OrderStatus::Shipped,
            Status::Delivered => OrderStatus::Delivered,
            Status::Rejected => OrderStatus::Rejected,
            Status::PaymentFailed => OrderStatus::PaymentFailed,
            Status::Cancelled => OrderStatus::Cancelled,
            Status::Refunded => OrderStatus::Refunded,
        }
    }

    pub fn from_proto(status: OrderStatus) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.proto() == status)
    }

    /// The edges of the life cycle; nothing else is ever recorded.
    pub fn may_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Created, StockReserved | Rejected | Cancelled)
                | (StockReserved, PaymentPending | Cancelled)
                | (PaymentPending, Paid | PaymentFailed | Cancelled)
                | (Paid, Shipped | Cancelled)
                | (Shipped, Delivered)
                | (Cancelled, Refunded)
        )
    }
}

/// What happened to an order, or what someone asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// Catalog held the stock.
    StockReserved,
    /// Catalog had not enough stock.
    StockRejected,
    /// Payments charged the order.
    PaymentSucceeded,
    /// Payments could not charge it.
    PaymentFailed,
    /// Payments returned the money.
    Refunded,
    /// The customer (or staff) cancels.
    Cancel,
    Ship,
    Deliver,
}

impl Input {
    pub const ALL: [Input; 8] = [
        Input::StockReserved,
        Input::StockRejected,
        Input::PaymentSucceeded,
        Input::PaymentFailed,
        Input::Refunded,
        Input::Cancel,
        Input::Ship,
        Input::Deliver,
    ];

    /// Commands come from people and are refused when they do not apply; saga events are
    /// ignored then (they are duplicates, or overtaken by a cancel).
    pub fn is_command(self) -> bool {
        matches!(self, Input::Cancel | Input::Ship | Input::Deliver)
    }
}

/// The events orders publishes, one per effect a decision asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    PaymentRequested,
    Rejected,
    Paid,
    PaymentFailed,
    Cancelled,
    RefundRequested,
    Refunded,
    Shipped,
    Delivered,
}

/// The part of an order the machine decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub status: Status,
    /// Cancelled while money was taken or may still be: a refund is owed once it is.
    pub refund_pending: bool,
    /// A charge succeeded (and was not refunded yet).
    pub charged: bool,
}

impl Machine {
    pub const NEW: Machine = Machine {
        status: Status::Created,
        refund_pending: false,
        charged: false,
    };

    /// No input can change it any more.
    pub fn is_final(self) -> bool {
        match self.status {
            Status::Delivered | Status::Rejected | Status::PaymentFailed | Status::Refunded => true,
            Status::Cancelled => !self.refund_pending,
            _ => false,
        }
    }

    /// What `input` does in this state.
    pub fn decide(self, input: Input) -> Decision {
        use Status::*;
        let Machine {
            status,
            refund_pending,
            charged,
        } = self;
        let go = |path: &[Status], refund_pending: bool, emit: &[Emit]| Decision::Apply {
            path: path.to_vec(),
            refund_pending,
            charged: match input {
                Input::PaymentSucceeded => true,
                Input::Refunded => false,
                _ => charged,
            },
            emit: emit.to_vec(),
        };
        match (input, status) {
            (Input::StockReserved, Created) => go(
                &[StockReserved, PaymentPending],
                false,
                &[Emit::PaymentRequested],
            ),
            (Input::StockRejected, Created) => go(&[Rejected], false, &[Emit::Rejected]),
            (Input::PaymentSucceeded, PaymentPending) => go(&[Paid], false, &[Emit::Paid]),
            // Charged after a cancel: the money goes back.
            (Input::PaymentSucceeded, Cancelled) if refund_pending && !charged => {
                go(&[], true, &[Emit::RefundRequested])
            }
            (Input::PaymentFailed, PaymentPending) => {
                go(&[PaymentFailed], false, &[Emit::PaymentFailed])
            }
            // The charge in flight at cancel time failed: nothing to refund.
            (Input::PaymentFailed, Cancelled) if refund_pending && !charged => go(&[], false, &[]),
            (Input::Refunded, Cancelled) if refund_pending && charged => {
                go(&[Refunded], false, &[Emit::Refunded])
            }
            (Input::Cancel, Created | StockReserved) => go(&[Cancelled], false, &[Emit::Cancelled]),
            // A charge may be in flight: its outcome decides whether a refund follows.
            (Input::Cancel, PaymentPending) => go(&[Cancelled], true, &[Emit::Cancelled]),
            (Input::Cancel, Paid) => go(
                &[Cancelled],
                true,
                &[Emit::Cancelled, Emit::RefundRequested],
            ),
            (Input::Cancel, Cancelled) => Decision::Unchanged,
            (Input::Ship, Paid) => go(&[Shipped], false, &[Emit::Shipped]),
            (Input::Deliver, Shipped) => go(&[Delivered], false, &[Emit::Delivered]),
            (input, _) if input.is_command() => Decision::Refuse(refusal(input, status)),
            _ => Decision::Ignore,
        }
    }
}

/// The outcome of [`Machine::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Move through `path` (possibly empty), set `refund_pending` and `charged`, publish
    /// `emit`.
    Apply {
        path: Vec<Status>,
        refund_pending: bool,
        charged: bool,
        emit: Vec<Emit>,
    },
    /// A command that asks for the state the order is already in.
    Unchanged,
    /// A saga event that no longer applies.
    Ignore,
    /// A command that does not apply; the message says why.
    Refuse(String),
}

fn refusal(input: Input, status: Status) -> String {
    let what = match input {
        Input::Cancel => "cancelled",
        Input::Ship => "shipped",
        Input::Deliver => "delivered",
        _ => "changed",
    };
    format!("an order that is {} cannot be {what}", status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every (state, input) pair, spelled out: the table the proto documents.
    #[test]
    fn every_state_and_input_has_the_documented_outcome() {
        use Status::*;
        for status in Status::ALL {
            for (refund_pending, charged) in [(false, false), (true, false), (true, true)] {
                if refund_pending && status != Cancelled {
                    continue; // only a cancelled order can owe a refund
                }
                let machine = Machine {
                    status,
                    refund_pending,
                    charged,
                };
                for input in Input::ALL {
                    let decision = machine.decide(input);
                    let owed = (refund_pending, charged);
                    let expected_path: Option<&[Status]> = match (input, status, owed) {
                        (Input::StockReserved, Created, _) => {
                            Some(&[StockReserved, PaymentPending])
                        }
                        (Input::StockRejected, Created, _) => Some(&[Rejected]),
                        (Input::PaymentSucceeded, PaymentPending, _) => Some(&[Paid]),
                        (Input::PaymentSucceeded, Cancelled, (true, false)) => Some(&[]),
                        (Input::PaymentFailed, PaymentPending, _) => Some(&[PaymentFailed]),
                        (Input::PaymentFailed, Cancelled, (true, false)) => Some(&[]),
                        (Input::Refunded, Cancelled, (true, true)) => Some(&[Refunded]),
                        (Input::Cancel, Created | StockReserved | PaymentPending | Paid, _) => {
                            Some(&[Cancelled])
                        }
                        (Input::Ship, Paid, _) => Some(&[Shipped]),
                        (Input::Deliver, Shipped, _) => Some(&[Delivered]),
                        _ => None,
                    };
                    match (expected_path, &decision) {
                        (Some(expected), Decision::Apply { path, .. }) => {
                            assert_eq!(path, expected, "{input:?} in {machine:?}")
                        }
                        (None, Decision::Unchanged) => {
                            assert_eq!((input, status), (Input::Cancel, Cancelled))
                        }
                        (None, Decision::Refuse(_)) => assert!(input.is_command()),
                        (None, Decision::Ignore) => assert!(!input.is_command()),
                        (expected, decision) => {
                            panic!(
                                "{input:?} in {machine:?}: expected {expected:?}, got {decision:?}"
                            )
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_edges_are_exactly_the_documented_graph() {
        let edges: Vec<(Status, Status)> = Status::ALL
            .into_iter()
            .flat_map(|from| Status::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.may_become(*to))
            .collect();
        assert_eq!(edges.len(), 12);
        for (from, _) in &edges {
            let machine = Machine {
                status: *from,
                ..Machine::NEW
            };
            assert!(!machine.is_final() || *from == Status::Cancelled);
        }
    }

    #[test]
    fn names_round_trip() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(Status::from_proto(status.proto()), Some(status));
        }
        assert_eq!(Status::parse("lost"), None);
    }

    fn input() -> impl Strategy<Value = Input> {
        proptest::sample::select(Input::ALL.to_vec())
    }

    proptest! {
        /// Whatever arrives in whatever order (duplicates, late and illegal events included),
        /// the recorded history only follows edges of the graph, a final order never changes,
        /// a paid order was pending payment first, and a refund only follows a charge.
        #[test]
        fn random_event_sequences_keep_the_invariants(inputs in proptest::collection::vec(input(), 0..40)) {
            let mut machine = Machine::NEW;
            let mut history = vec![Status::Created];
            let mut charged = false;
            let mut refund_requested = false;
            for input in inputs {
                let before = machine;
                match machine.decide(input) {
                    Decision::Apply { path, refund_pending, charged: now_charged, emit } => {
                        prop_assert!(!before.is_final(), "{input:?} changed final {before:?}");
                        for next in path {
                            prop_assert!(machine.status.may_become(next), "{:?} → {next:?}", machine.status);
                            machine.status = next;
                            history.push(next);
                        }
                        machine.refund_pending = refund_pending;
                        machine.charged = now_charged;
                        if input == Input::PaymentSucceeded {
                            charged = true;
                        }
                        if emit.contains(&Emit::RefundRequested) {
                            prop_assert!(charged, "refund requested without a charge");
                            refund_requested = true;
                        }
                        if machine.status == Status::Refunded {
                            prop_assert!(refund_requested);
                        }
                    }
                    Decision::Unchanged | Decision::Ignore | Decision::Refuse(_) => {
                        prop_assert_eq!(machine, before);
                    }
                }
            }
            if let Some(paid) = history.iter().position(|s| *s == Status::Paid) {
                prop_assert_eq!(history[paid - 1], Status::PaymentPending);
            }
            // A charge that landed is either kept (paid onwards) or being or been refunded.
            if charged && machine.is_final() {
                prop_assert!(matches!(machine.status, Status::Delivered | Status::Refunded));
            }
        }
    }
}
