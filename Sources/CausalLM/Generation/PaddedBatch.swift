import Foundation

/// Hugging Face-style padded input, accepted at the API edge and unpadded into ragged sequences.
///
/// Inside the engine there is no padding: each row becomes its own sequence holding only the tokens whose mask is 1,
/// at positions 0, 1, 2, ... So a row gives exactly what its unpadded tokens give alone, whichever side was padded
/// and whatever the pad id is (pad == eos included).
public struct PaddedBatch: Sendable, Equatable {
    public var inputIDs: [[Int]]        // (B, T)
    public var attentionMask: [[Int]]   // (B, T), 1 = token, 0 = padding
    public var positionIDs: [[Int]]?    // (B, T), optional; must count 0, 1, 2, ... over each row's tokens

    public init(inputIDs: [[Int]], attentionMask: [[Int]], positionIDs: [[Int]]? = nil) {
        self.inputIDs = inputIDs; self.attentionMask = attentionMask; self.positionIDs = positionIDs
    }

    /// Pads ragged rows on the given side (for tests and for callers that hold unpadded rows).
    public static func padding(_ rows: [[Int]], side: PaddingSide, padID: Int) -> PaddedBatch {
        let T = rows.map(\.count).max() ?? 0
        var ids: [[Int]] = [], mask: [[Int]] = [], pos: [[Int]] = []
        for r in rows {
            let pad = T - r.count
            switch side {
            case .left:
                ids.append(Array(repeating: padID, count: pad) + r)
                mask.append(Array(repeating: 0, count: pad) + Array(repeating: 1, count: r.count))
                pos.append(Array(repeating: 1, count: pad) + Array(0..<r.count))   // HF: cumsum(mask) - 1, pads filled with 1
            case .right:
                ids.append(r + Array(repeating: padID, count: pad))
                mask.append(Array(repeating: 1, count: r.count) + Array(repeating: 0, count: pad))
                pos.append(Array(0..<r.count) + Array(repeating: 1, count: pad))
            }
        }
        return PaddedBatch(inputIDs: ids, attentionMask: mask, positionIDs: pos)
    }

    /// The ragged rows: for each row, its tokens where the mask is 1, in order.
    /// Throws an error naming the row for ragged input, a mask of the wrong shape or with a hole, a row with no
    /// tokens, or position ids that do not count up from 0 over the row's tokens.
    public func unpadded(vocabularySize: Int? = nil) throws -> [[Int]] {
        guard attentionMask.count == inputIDs.count else {
            throw CausalError.invalidArgument("attention_mask has \(attentionMask.count) rows but input_ids has \(inputIDs.count)")
        }
        if let p = positionIDs, p.count != inputIDs.count {
            throw CausalError.invalidArgument("position_ids has \(p.count) rows but input_ids has \(inputIDs.count)")
        }
        let T = inputIDs.first?.count ?? 0
        return try inputIDs.indices.map { b in try row(b, width: T, vocabularySize: vocabularySize) }
    }

    /// Unpads one row; errors name the row.
    public func row(_ b: Int, width T: Int, vocabularySize: Int?) throws -> [Int] {
        let ids = inputIDs[b], mask = attentionMask[b]
        func bad(_ s: String) -> CausalError { .invalidArgument("row \(b): \(s)") }
        guard ids.count == T else { throw bad("input_ids has \(ids.count) entries, row 0 has \(T) (padded rows must all have one length)") }
        guard mask.count == T else { throw bad("attention_mask has \(mask.count) entries, input_ids has \(T)") }
        if let m = mask.first(where: { $0 != 0 && $0 != 1 }) { throw bad("attention_mask holds \(m); only 0 and 1 are allowed") }
        guard let first = mask.firstIndex(of: 1), let last = mask.lastIndex(of: 1) else { throw bad("has no tokens (attention_mask is all 0)") }
        if let hole = mask[first...last].firstIndex(of: 0) {
            throw bad("attention_mask has a hole at position \(hole): tokens must be contiguous, with padding only on the left or right")
        }
        let tokens = Array(ids[first...last])
        if let V = vocabularySize, let badID = tokens.first(where: { $0 < 0 || $0 >= V }) {
            throw bad("token id \(badID) is outside the vocabulary (0..<\(V))")
        }
        if let pos = positionIDs?[b] {
            guard pos.count == T else { throw bad("position_ids has \(pos.count) entries, input_ids has \(T)") }
            if Array(pos[first...last]) != Array(0..<tokens.count) {
                throw bad("position_ids over the tokens must be 0, 1, 2, ... (each sequence starts at position 0)")
            }
        }
        return tokens
    }
}

public enum PaddingSide: String, Sendable, CaseIterable {
    case left, right
}
