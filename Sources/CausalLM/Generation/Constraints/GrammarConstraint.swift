import Foundation

// The recognizer: a set of pushdown stacks over the byte grammar, as llama.cpp's grammar sampler keeps them, with
// every stack hash-consed (a stack is a node id: an element position and the node below it) and every *set* of
// stacks interned as a state id. A state's successor on a byte is computed once and kept in a table, so the
// recognizer becomes a lazily built DFA over bytes: walking the vocabulary trie from a state costs one table
// lookup per trie node, and the allowed-token set of a state is computed once and cached.
//
// Right recursion (how repetitions are lowered) does not grow stacks: a reference that ends its alternative
// pushes nothing to return to.

/// The compiled recognizer shared by every sequence of one constraint. Not thread-safe by itself;
/// `GrammarConstraint` holds its lock around every call.
final class GrammarMachine {
    let g: ByteGrammar
    /// Stack nodes: the element position on top and the node below (-1: the bottom).
    private var nodePos: [Int32] = []
    private var nodeBelow: [Int32] = []
    private var nodeIndex: [UInt64: Int32] = [:]
    /// States: sorted stack node ids; -1 stands for the empty stack (the input so far is a complete sentence).
    private(set) var states: [[Int32]] = []
    private var stateIndex: [[Int32]: Int32] = [:]
    /// Successor of state s on byte b at `s * 256 + b`: -2 not computed yet, -1 no stack survives.
    var trans: [Int32] = []
    private(set) var accepting: [Bool] = []
    private(set) var onlyAccepting: [Bool] = []
    static let dead: Int32 = -1
    private(set) var initial: Int32 = -1

    init(_ g: ByteGrammar) {
        self.g = g
        var out: [Int32] = []
        var seen = Set<UInt64>()
        for a in g.alts[g.root] { expand(a, -1, &out, &seen) }
        initial = intern(out)
    }

    private func node(_ pos: Int32, _ below: Int32) -> Int32 {
        let key = UInt64(UInt32(bitPattern: pos)) << 32 | UInt64(UInt32(bitPattern: below &+ 1))
        if let n = nodeIndex[key] { return n }
        let n = Int32(nodePos.count)
        nodePos.append(pos)
        nodeBelow.append(below)
        nodeIndex[key] = n
        return n
    }

    /// Adds to `out` every stack with a terminal on top reachable from element position `pos` over `below`.
    private func expand(_ pos: Int32, _ below: Int32, _ out: inout [Int32], _ seen: inout Set<UInt64>) {
        let key = UInt64(UInt32(bitPattern: pos)) << 32 | UInt64(UInt32(bitPattern: below &+ 1))
        guard seen.insert(key).inserted else { return }
        let e = g.elems[Int(pos)]
        if e == ByteGrammar.end {
            if below < 0 { out.append(-1) } else { expand(nodePos[Int(below)], nodeBelow[Int(below)], &out, &seen) }
        } else if e & 1 == 0 {
            out.append(node(pos, below))
        } else {
            let next = pos + 1
            let ret = g.elems[Int(next)] == ByteGrammar.end ? below : node(next, below)
            for a in g.alts[Int(e >> 1)] { expand(a, ret, &out, &seen) }
        }
    }

    private func intern(_ stacks: [Int32]) -> Int32 {
        if stacks.isEmpty { return GrammarMachine.dead }
        let key = Array(Set(stacks)).sorted()
        if let s = stateIndex[key] { return s }
        let s = Int32(states.count)
        states.append(key)
        stateIndex[key] = s
        trans.append(contentsOf: repeatElement(-2, count: 256))
        accepting.append(key.first == -1)
        onlyAccepting.append(key == [-1])
        return s
    }

    /// The state after byte `b` from state `s` (computed and stored on first use).
    @inline(__always) func step(_ s: Int32, _ b: UInt8) -> Int32 {
        let t = trans[Int(s) &* 256 &+ Int(b)]
        return t != -2 ? t : compute(s, b)
    }

    private func compute(_ s: Int32, _ b: UInt8) -> Int32 {
        var out: [Int32] = []
        var seen = Set<UInt64>()
        for st in states[Int(s)] where st >= 0 {
            let p = nodePos[Int(st)]
            if g.sets[Int(g.elems[Int(p)] >> 1)].contains(b) { expand(p + 1, nodeBelow[Int(st)], &out, &seen) }
        }
        let t = intern(out)
        trans[Int(s) * 256 + Int(b)] = t
        return t
    }

    var stateCount: Int { states.count }
    var nodeCount: Int { nodePos.count }
}

/// Constrained decoding by a grammar (docs/constrained-decoding.md): only tokens whose bytes continue a sentence of
/// the grammar may be chosen, end tokens only once the output is a complete sentence, and generation stops
/// (reason `stop`) when nothing may follow. Compiled once, shared by any number of sequences (thread-safe).
public final class GrammarConstraint: TokenConstraint, @unchecked Sendable {
    private let machine: GrammarMachine
    private let trie: TokenTrie
    private let lock = NSLock()
    /// Allowed-token bit sets by state (bit `id` of word `id / 64`).
    private var masks: [Int32: [UInt64]] = [:]
    private var maskBytes = 0
    /// Cached masks are dropped (all of them) when they would take more than this many bytes.
    public static let maskCacheBytes = 256 << 20
    /// The grammar text this constraint was compiled from.
    public let grammarText: String
    private var stats = Statistics()

    /// Mask timings, for `causal bench`.
    public struct Statistics: Sendable {
        /// Calls of `mask`, and how many found the state's allowed set cached.
        public var maskCalls = 0
        public var cacheHits = 0
        /// Total time inside `mask` (computing and applying), in seconds: wall clock, and CPU time of the calling
        /// threads (the same on an idle machine; on a loaded one the wall clock also counts time waiting for a core).
        public var maskSeconds = 0.0
        public var maskCPUSeconds = 0.0
        /// States of the recognizer built so far.
        public var states = 0
    }

    /// Compiles grammar text (the format in docs/constrained-decoding.md) against a tokenizer's vocabulary.
    /// Throws `CausalError.invalidArgument` naming the line and column of a syntax error, an undefined rule, left
    /// recursion, a grammar with no finite sentence, or a limit exceeded.
    public init(grammar: String, tokenizer: any TextTokenizer, limits: GrammarLimits = GrammarLimits()) throws {
        let g = try GrammarCompiler.compile(grammar, limits: limits)
        machine = GrammarMachine(g)
        trie = TokenTrie.shared(for: tokenizer)
        grammarText = grammar
    }

    /// A constraint to JSON text that validates against a JSON Schema (the subset in docs/constrained-decoding.md).
    /// Errors name the schema path (`#/properties/x/items`) and the keyword.
    public static func jsonSchema(_ schema: String, tokenizer: any TextTokenizer) throws -> GrammarConstraint {
        try GrammarConstraint(grammar: try JSONSchemaGrammar.grammar(schema: schema), tokenizer: tokenizer)
    }

    public static func jsonSchema(_ schema: Data, tokenizer: any TextTokenizer) throws -> GrammarConstraint {
        try GrammarConstraint(grammar: try JSONSchemaGrammar.grammar(schema: schema), tokenizer: tokenizer)
    }

    /// A constraint to any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    public static func jsonObject(tokenizer: any TextTokenizer) throws -> GrammarConstraint {
        try GrammarConstraint(grammar: JSONSchemaGrammar.anyObjectGrammar, tokenizer: tokenizer)
    }

    public func makeState() -> any TokenConstraintState {
        lock.lock(); defer { lock.unlock() }
        return GrammarConstraintState(owner: self, state: machine.initial)
    }

    public var statistics: Statistics {
        lock.lock(); defer { lock.unlock() }
        var s = stats
        s.states = machine.stateCount
        return s
    }

    public func resetStatistics() {
        lock.lock(); defer { lock.unlock() }
        stats = Statistics()
    }

    // MARK: Per-sequence operations (under the lock)

    /// The allowed-token bit set of a state.
    private func allowed(_ s: Int32) -> [UInt64] {
        if let m = masks[s] { stats.cacheHits += 1; return m }
        let words = (trie.vocabularySize + 63) / 64
        var bits = [UInt64](repeating: 0, count: words)
        let m = machine
        let n = trie.byte.count
        var at = [Int32](repeating: 0, count: trie.maxDepth + 1)
        at[0] = s
        trie.byte.withUnsafeBufferPointer { byte in
        trie.depth.withUnsafeBufferPointer { depth in
        trie.skip.withUnsafeBufferPointer { skip in
        trie.tokenStart.withUnsafeBufferPointer { ts in
        trie.tokenIDs.withUnsafeBufferPointer { ids in
            var i = 0
            while i < n {
                let d = Int(depth[i])
                let t = m.step(at[d - 1], byte[i])
                if t < 0 { i = Int(skip[i]); continue }
                at[d] = t
                var k = Int(ts[i])
                let e = Int(ts[i + 1])
                while k < e {
                    let id = Int(ids[k])
                    bits[id >> 6] |= UInt64(1) << UInt64(id & 63)
                    k += 1
                }
                i += 1
            }
        }}}}}
        maskBytes += words * 8
        if maskBytes > GrammarConstraint.maskCacheBytes { masks = [:]; maskBytes = words * 8 }
        masks[s] = bits
        return bits
    }

    fileprivate func mask(_ s: Int32, _ logits: inout [Float], endTokenIDs: Set<Int>) {
        lock.lock(); defer { lock.unlock() }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let c0 = GrammarConstraint.threadCPUSeconds()
        stats.maskCalls += 1
        let accept = s >= 0 && machine.accepting[Int(s)]
        let bits = s >= 0 ? allowed(s) : []
        let V = logits.count
        var saved: [(Int, Float)] = []
        var any = false
        if accept || bits.isEmpty {
            for e in endTokenIDs where e >= 0 && e < V { saved.append((e, logits[e])) }
        }
        logits.withUnsafeMutableBufferPointer { l in
            let limit = min(V, trie.vocabularySize)
            var w = 0
            while w * 64 < limit {
                let word = bits.isEmpty ? 0 : bits[w]
                if word != 0 { any = true }
                let base = w * 64
                let top = min(64, limit - base)
                if word == 0 {
                    var j = 0
                    while j < top { l[base + j] = -.infinity; j += 1 }
                } else if word != ~0 {
                    var free = ~word   // banned bits
                    while free != 0 {
                        let j = free.trailingZeroBitCount
                        if j >= top { break }
                        l[base + j] = -.infinity
                        free &= free - 1
                    }
                }
                w += 1
            }
            var k = limit
            while k < V { l[k] = -.infinity; k += 1 }
        }
        // End tokens: allowed when the output is complete, and as the way out when nothing else is allowed.
        if accept || !any { for (e, v) in saved { logits[e] = v } }
        stats.maskSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        stats.maskCPUSeconds += GrammarConstraint.threadCPUSeconds() - c0
    }

    static func threadCPUSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    fileprivate func advance(_ s: Int32, _ token: Int) -> Int32 {
        lock.lock(); defer { lock.unlock() }
        guard s >= 0, token >= 0, token < trie.vocabularySize else { return GrammarMachine.dead }
        let lo = Int(trie.bytesStart[token]), hi = Int(trie.bytesStart[token + 1])
        guard hi > lo else { return GrammarMachine.dead }
        var t = s
        for k in lo..<hi {
            t = machine.step(t, trie.bytes[k])
            if t < 0 { return GrammarMachine.dead }
        }
        return t
    }

    fileprivate func isComplete(_ s: Int32) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return s < 0 || machine.onlyAccepting[Int(s)]
    }

    fileprivate func isAccepting(_ s: Int32) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return s >= 0 && machine.accepting[Int(s)]
    }

    /// Whether `text` is a complete sentence of the grammar (for tests and checks; byte by byte, no tokenizer).
    public func matches(_ text: String) -> Bool {
        lock.lock(); defer { lock.unlock() }
        var t = machine.initial
        for b in text.utf8 {
            guard t >= 0 else { return false }
            t = machine.step(t, b)
        }
        return t >= 0 && machine.accepting[Int(t)]
    }

    /// Whether `text` can be continued to a sentence of the grammar (it is a prefix of one).
    public func acceptsPrefix(_ bytes: [UInt8]) -> Bool {
        lock.lock(); defer { lock.unlock() }
        var t = machine.initial
        for b in bytes {
            guard t >= 0 else { return false }
            t = machine.step(t, b)
        }
        return t >= 0
    }
}

/// One sequence's position in a `GrammarConstraint`.
public struct GrammarConstraintState: TokenConstraintState {
    let owner: GrammarConstraint
    var state: Int32

    public mutating func mask(_ logits: inout [Float], endTokenIDs: Set<Int>) {
        owner.mask(state, &logits, endTokenIDs: endTokenIDs)
    }

    public mutating func advance(_ token: Int) { state = owner.advance(state, token) }

    public var isComplete: Bool { owner.isComplete(state) }

    /// The output so far is a complete sentence (an end token may come next).
    public var isAccepting: Bool { owner.isAccepting(state) }
}
