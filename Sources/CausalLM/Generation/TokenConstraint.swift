import Foundation

/// Limits which tokens a sequence may choose next: constrained decoding (a grammar, a JSON schema).
///
/// A constraint is compiled once and shared, read-only, by every sequence that uses it; each sequence walks it with
/// its own `TokenConstraintState`, so a constrained sequence gives in a batch exactly what it gives alone.
public protocol TokenConstraint: AnyObject, Sendable {
    /// A fresh state at the start of a sequence's output.
    func makeState() -> any TokenConstraintState
}

/// One sequence's position in a `TokenConstraint`.
public protocol TokenConstraintState {
    /// Sets to -infinity the logit of every token that may not come next. The ids in `endTokenIDs` may come next
    /// only when the output so far is a complete sentence of the constraint. At least one token stays allowed.
    mutating func mask(_ logits: inout [Float], endTokenIDs: Set<Int>)
    /// Moves past `token`, one that `mask` allowed.
    mutating func advance(_ token: Int)
    /// The output is complete and nothing may follow it: the sequence stops (reason `stop`) without an end token.
    var isComplete: Bool { get }
}
