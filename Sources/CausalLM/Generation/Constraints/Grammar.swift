import Foundation

// The grammar text format (docs/constrained-decoding.md): rules `name ::= body`, alternatives `|`, sequences,
// groups `( )`, postfix `*` `+` `?` `{m}` `{m,}` `{m,n}`, string literals "...", character classes [a-z] [^"\\],
// `.` (any character), rule references, comments from `#` to the end of the line. `root` is the start rule.
//
// Compilation: the text is parsed into expressions, then lowered to flat rules over *bytes*: every literal
// character becomes its UTF-8 bytes, every character class a set of UTF-8 byte-range sequences (so a token that
// ends in the middle of a character is matched exactly), groups and repetitions become generated rules
// (`x*` is `R ::= x R | ε`, right-recursive, which the recognizer runs without growing its stacks).
// Checks: undefined rules, left recursion (refused), rules with no finite sentence (alternatives using them are
// dropped; an error when `root` has none), size limits.

/// A set of bytes (a terminal of the byte-level grammar).
struct ByteSet: Hashable {
    var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0

    @inline(__always) func contains(_ b: UInt8) -> Bool {
        let bit = UInt64(1) << UInt64(b & 63)
        switch b >> 6 {
        case 0: return w0 & bit != 0
        case 1: return w1 & bit != 0
        case 2: return w2 & bit != 0
        default: return w3 & bit != 0
        }
    }

    mutating func insert(range lo: UInt8, _ hi: UInt8) {
        var b = Int(lo)
        while b <= Int(hi) {
            let bit = UInt64(1) << UInt64(b & 63)
            switch b >> 6 {
            case 0: w0 |= bit
            case 1: w1 |= bit
            case 2: w2 |= bit
            default: w3 |= bit
            }
            b += 1
        }
    }

    var isEmpty: Bool { w0 | w1 | w2 | w3 == 0 }
}

/// Limits on what a grammar may compile to (bounded time and memory for any input).
public struct GrammarLimits: Sendable {
    /// Rules after lowering (groups, repetitions and character classes add rules).
    public var maxRules = 200_000
    /// Elements (terminals and references) over all rules after lowering.
    public var maxElements = 4_000_000
    /// Largest bound in `{m,n}`.
    public var maxRepeat = 1000
    /// Nesting of groups in the text.
    public var maxNesting = 200
    public init() {}
}

/// A grammar lowered to bytes: rules of alternatives of elements, stored flat.
///
/// `elems` holds every alternative as a run of elements ended by `end`: an element `>= 0` and even is terminal
/// `elem / 2` (an index into `sets`), odd is a reference to rule `elem / 2`.
struct ByteGrammar {
    static let end: Int32 = -1
    var elems: [Int32] = []
    var sets: [ByteSet] = []
    /// For each rule, the start of each alternative in `elems`.
    var alts: [[Int32]] = []
    var names: [String] = []
    var root: Int = 0
}

/// Parses and compiles grammar text.
enum GrammarCompiler {
    indirect enum Expr {
        case seq([Expr])
        case alt([Expr])
        case lit([UInt32])
        case cls([(UInt32, UInt32)], negated: Bool)
        case ref(String, line: Int)
        case rep(Expr, min: Int, max: Int?)
    }

    static func fail(_ s: String) -> CausalError { .invalidArgument("grammar: " + s) }

    // MARK: Parsing

    struct Parser {
        let s: [UInt32]
        var i = 0
        var depth = 0
        let limits: GrammarLimits

        init(_ text: String, limits: GrammarLimits) {
            s = text.unicodeScalars.map(\.value)
            self.limits = limits
        }

        func position(_ at: Int) -> String {
            var line = 1, col = 1
            for k in 0..<min(at, s.count) { if s[k] == 10 { line += 1; col = 1 } else { col += 1 } }
            return "line \(line) column \(col)"
        }

        func error(_ msg: String, at: Int? = nil) -> CausalError { fail("\(position(at ?? i)): \(msg)") }

        var atEnd: Bool { i >= s.count }
        func peek(_ k: Int = 0) -> UInt32? { i + k < s.count ? s[i + k] : nil }

        mutating func skipSpace() {
            while i < s.count {
                let c = s[i]
                if c == 32 || c == 9 || c == 10 || c == 13 { i += 1 }
                else if c == 35 { while i < s.count && s[i] != 10 { i += 1 } }   // '#'
                else { break }
            }
        }

        static func isNameChar(_ c: UInt32) -> Bool {
            (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 45 || c == 95
        }

        mutating func name() -> String? {
            let start = i
            while i < s.count && Parser.isNameChar(s[i]) { i += 1 }
            guard i > start else { return nil }
            return String(String.UnicodeScalarView(s[start..<i].map { Unicode.Scalar($0)! }))
        }

        /// Whether a rule definition (`name ::=`) starts at the current position.
        func atDefinition() -> Bool {
            var k = i
            while k < s.count && Parser.isNameChar(s[k]) { k += 1 }
            guard k > i else { return false }
            while k < s.count && (s[k] == 32 || s[k] == 9 || s[k] == 10 || s[k] == 13) { k += 1 }
            return k + 2 < s.count + 0 && s[k] == 58 && s[k + 1] == 58 && s[k + 2] == 61
        }

        mutating func rules() throws -> [(name: String, body: Expr, at: Int)] {
            var out: [(String, Expr, Int)] = []
            while true {
                skipSpace()
                if atEnd { break }
                let at = i
                guard let n = name() else { throw error("expected a rule name") }
                skipSpace()
                guard peek() == 58, peek(1) == 58, peek(2) == 61 else { throw error("expected '::=' after rule name '\(n)'") }
                i += 3
                let body = try alternatives()
                skipSpace()
                if !atEnd && !atDefinition() { throw error("unexpected character '\(Unicode.Scalar(s[i]).map { String($0) } ?? "?")'") }
                out.append((n, body, at))
            }
            return out
        }

        mutating func alternatives() throws -> Expr {
            var alts: [Expr] = [try sequence()]
            while true {
                skipSpace()
                guard peek() == 124 else { break }   // '|'
                i += 1
                alts.append(try sequence())
            }
            return alts.count == 1 ? alts[0] : .alt(alts)
        }

        mutating func sequence() throws -> Expr {
            var items: [Expr] = []
            while true {
                skipSpace()
                guard let c = peek(), c != 124, c != 41 else { break }   // '|', ')'
                if atDefinition() { break }
                var atom = try self.atom()
                while true {
                    skipSpace()
                    guard let p = peek() else { break }
                    if p == 42 { i += 1; atom = .rep(atom, min: 0, max: nil) }
                    else if p == 43 { i += 1; atom = .rep(atom, min: 1, max: nil) }
                    else if p == 63 { i += 1; atom = .rep(atom, min: 0, max: 1) }
                    else if p == 123 { atom = try braces(atom) }
                    else { break }
                }
                items.append(atom)
            }
            return items.count == 1 ? items[0] : .seq(items)
        }

        mutating func number() -> Int? {
            let start = i
            var v = 0
            while let c = peek(), c >= 48, c <= 57 {
                v = min(v * 10 + Int(c - 48), 1 << 40)
                i += 1
            }
            return i > start ? v : nil
        }

        mutating func braces(_ atom: Expr) throws -> Expr {
            let at = i
            i += 1
            skipSpace()
            guard let lo = number() else { throw error("expected a number after '{'") }
            skipSpace()
            var hi: Int? = lo
            if peek() == 44 {   // ','
                i += 1
                skipSpace()
                hi = number()
                skipSpace()
            }
            guard peek() == 125 else { throw error("expected '}' to close the repetition") }
            i += 1
            if let h = hi, h < lo { throw error("repetition {\(lo),\(h)}: the maximum is below the minimum", at: at) }
            if max(lo, hi ?? 0) > limits.maxRepeat {
                throw error("repetition bound \(max(lo, hi ?? 0)) exceeds the limit \(limits.maxRepeat)", at: at)
            }
            return .rep(atom, min: lo, max: hi)
        }

        mutating func atom() throws -> Expr {
            guard let c = peek() else { throw error("expected an element") }
            switch c {
            case 34:   // '"'
                i += 1
                var out: [UInt32] = []
                while true {
                    guard let d = peek() else { throw error("unterminated string literal") }
                    if d == 34 { i += 1; break }
                    out.append(try char())
                }
                return .lit(out)
            case 91:   // '['
                let at = i
                i += 1
                var negated = false
                if peek() == 94 { negated = true; i += 1 }
                var ranges: [(UInt32, UInt32)] = []
                while true {
                    guard let d = peek() else { throw error("unterminated character class", at: at) }
                    if d == 93 { i += 1; break }
                    let lo = try char()
                    if peek() == 45, let e = peek(1), e != 93 {   // a range a-z
                        i += 1
                        let hi = try char()
                        guard hi >= lo else { throw error("character range is reversed") }
                        ranges.append((lo, hi))
                    } else {
                        ranges.append((lo, lo))
                    }
                }
                return .cls(ranges, negated: negated)
            case 40:   // '('
                let at = i
                i += 1
                depth += 1
                if depth > limits.maxNesting { throw error("groups nested deeper than \(limits.maxNesting)") }
                let e = try alternatives()
                skipSpace()
                guard peek() == 41 else { throw error("expected ')' to close the group opened at \(position(at))") }
                i += 1
                depth -= 1
                return .seq([e])
            case 46:   // '.'
                i += 1
                return .cls([], negated: true)
            default:
                let at = i
                guard let n = name() else {
                    throw error("unexpected character '\(Unicode.Scalar(c).map { String($0) } ?? "?")'")
                }
                return .ref(n, line: at)
            }
        }

        /// One character of a literal or class, with escapes \n \r \t \\ \" \] \[ \- \^ \xHH \uHHHH \UHHHHHHHH.
        mutating func char() throws -> UInt32 {
            guard let c = peek() else { throw error("unexpected end") }
            i += 1
            guard c == 92 else { return c }
            guard let e = peek() else { throw error("unterminated escape") }
            i += 1
            switch e {
            case 110: return 10
            case 114: return 13
            case 116: return 9
            case 48: return 0
            case 120, 117, 85:   // x u U
                let n = e == 120 ? 2 : e == 117 ? 4 : 8
                var v: UInt32 = 0
                for _ in 0..<n {
                    guard let h = peek(), let d = Parser.hex(h) else { throw error("expected \(n) hex digits after '\\\(Unicode.Scalar(e)!)'") }
                    v = v * 16 + d
                    i += 1
                }
                guard v <= 0x10FFFF, !(0xD800...0xDFFF).contains(v) else { throw error("escape names U+\(String(v, radix: 16, uppercase: true)), not a character") }
                return v
            case 34, 92, 93, 91, 45, 94, 47, 39: return e
            default: throw error("unknown escape '\\\(Unicode.Scalar(e).map { String($0) } ?? "?")'", at: i - 2)
            }
        }

        static func hex(_ c: UInt32) -> UInt32? {
            if c >= 48 && c <= 57 { return c - 48 }
            if c >= 97 && c <= 102 { return c - 87 }
            if c >= 65 && c <= 70 { return c - 55 }
            return nil
        }
    }

    // MARK: Lowering

    /// Scalar ranges, sorted and merged, without surrogates.
    static func normalize(_ ranges: [(UInt32, UInt32)], negated: Bool) -> [(UInt32, UInt32)] {
        var rs = ranges.sorted { $0.0 < $1.0 }
        var merged: [(UInt32, UInt32)] = []
        for r in rs {
            if let last = merged.last, r.0 <= last.1 &+ 1 { merged[merged.count - 1].1 = max(last.1, r.1) } else { merged.append(r) }
        }
        if negated {
            var comp: [(UInt32, UInt32)] = []
            var next: UInt32 = 0
            for r in merged {
                if r.0 > next { comp.append((next, r.0 - 1)) }
                next = r.1 + 1
            }
            if next <= 0x10FFFF { comp.append((next, 0x10FFFF)) }
            merged = comp
        }
        rs = []
        for r in merged {   // drop surrogates
            if r.1 < 0xD800 || r.0 > 0xDFFF { rs.append(r); continue }
            if r.0 < 0xD800 { rs.append((r.0, 0xD7FF)) }
            if r.1 > 0xDFFF { rs.append((0xE000, r.1)) }
        }
        return rs
    }

    static func encode(_ cp: UInt32, _ n: Int) -> [UInt8] {
        switch n {
        case 1: return [UInt8(cp)]
        case 2: return [UInt8(0xC0 | cp >> 6), UInt8(0x80 | cp & 0x3F)]
        case 3: return [UInt8(0xE0 | cp >> 12), UInt8(0x80 | (cp >> 6) & 0x3F), UInt8(0x80 | cp & 0x3F)]
        default: return [UInt8(0xF0 | cp >> 18), UInt8(0x80 | (cp >> 12) & 0x3F), UInt8(0x80 | (cp >> 6) & 0x3F), UInt8(0x80 | cp & 0x3F)]
        }
    }

    /// The UTF-8 encodings of a scalar range as sequences of byte ranges (each sequence matches exactly the
    /// encodings of a sub-range).
    static func utf8Sequences(_ ranges: [(UInt32, UInt32)]) -> [[(UInt8, UInt8)]] {
        var out: [[(UInt8, UInt8)]] = []
        func rec(_ a: UInt32, _ b: UInt32, _ n: Int) {
            if a > b { return }
            for k in 1..<max(n, 1) {
                let m: UInt32 = (1 << (6 * UInt32(k))) - 1
                if a & ~m != b & ~m {
                    if a & m != 0 { rec(a, a | m, n); rec((a | m) + 1, b, n); return }
                    if b & m != m { rec(a, (b & ~m) - 1, n); rec(b & ~m, b, n); return }
                }
            }
            let ea = encode(a, n), eb = encode(b, n)
            out.append(Array(zip(ea, eb)))
        }
        let bounds: [(UInt32, UInt32, Int)] = [(0, 0x7F, 1), (0x80, 0x7FF, 2), (0x800, 0xFFFF, 3), (0x10000, 0x10FFFF, 4)]
        for r in ranges {
            for (lo, hi, n) in bounds where r.0 <= hi && r.1 >= lo { rec(max(r.0, lo), min(r.1, hi), n) }
        }
        return out
    }

    struct Lowerer {
        var g = ByteGrammar()
        var ruleIndex: [String: Int] = [:]
        var setIndex: [ByteSet: Int] = [:]
        var classRules: [String: Int] = [:]
        var bodies: [[[Int32]]] = []     // per rule: alternatives of elements (before flattening)
        var defined: [Bool] = []
        var refLines: [String: Int] = [:]
        let limits: GrammarLimits
        var elementCount = 0

        init(limits: GrammarLimits) { self.limits = limits }

        mutating func rule(named n: String) -> Int {
            if let r = ruleIndex[n] { return r }
            let r = g.names.count
            g.names.append(n)
            bodies.append([])
            defined.append(false)
            ruleIndex[n] = r
            return r
        }

        mutating func newRule(_ base: String) throws -> Int {
            guard g.names.count < limits.maxRules else { throw fail("the grammar needs more than \(limits.maxRules) rules") }
            var n = "\(base)-\(g.names.count)"
            while ruleIndex[n] != nil { n += "_" }
            let r = rule(named: n)
            defined[r] = true
            return r
        }

        mutating func set(_ s: ByteSet) -> Int32 {
            if let k = setIndex[s] { return Int32(k) * 2 }
            let k = g.sets.count
            g.sets.append(s)
            setIndex[s] = k
            return Int32(k) * 2
        }

        mutating func setBody(_ r: Int, _ alts: [[Int32]]) throws {
            bodies[r] = alts
            elementCount += alts.reduce(0) { $0 + $1.count + 1 }
            if elementCount > limits.maxElements { throw fail("the grammar needs more than \(limits.maxElements) elements") }
        }

        /// Elements for a literal character or class.
        mutating func classElements(_ ranges: [(UInt32, UInt32)], negated: Bool, owner: String) throws -> [Int32] {
            let rs = normalize(ranges, negated: negated)
            guard !rs.isEmpty else { return [] }   // empty class: handled by caller
            let key = rs.map { "\($0.0)-\($0.1)" }.joined(separator: ",")
            if let r = classRules[key] { return [Int32(r) * 2 + 1] }
            let seqs = utf8Sequences(rs)
            var single = ByteSet()
            var multi: [[Int32]] = []
            for sq in seqs {
                if sq.count == 1 { single.insert(range: sq[0].0, sq[0].1); continue }
                multi.append(sq.map { var b = ByteSet(); b.insert(range: $0.0, $0.1); return set(b) })
            }
            if multi.isEmpty { return [set(single)] }
            var alts = multi
            if !single.isEmpty { alts.insert([set(single)], at: 0) }
            let r = try newRule("\(owner)-char")
            try setBody(r, alts)
            classRules[key] = r
            return [Int32(r) * 2 + 1]
        }

        /// Lowers an expression to a sequence of elements; `nil` when it can match nothing (an empty class).
        mutating func lower(_ e: Expr, owner: String) throws -> [Int32]? {
            switch e {
            case let .lit(cs):
                var out: [Int32] = []
                for c in cs {
                    for b in encode(c, c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4) {
                        var s = ByteSet(); s.insert(range: b, b); out.append(set(s))
                    }
                }
                return out
            case let .cls(ranges, negated):
                let els = try classElements(ranges, negated: negated, owner: owner)
                return els.isEmpty ? nil : els
            case let .ref(n, at):
                if refLines[n] == nil { refLines[n] = at }
                return [Int32(rule(named: n)) * 2 + 1]
            case let .seq(items):
                var out: [Int32] = []
                for it in items {
                    guard let l = try lower(it, owner: owner) else { return nil }
                    out += l
                }
                return out
            case let .alt(alts):
                var bodyAlts: [[Int32]] = []
                for a in alts { if let l = try lower(a, owner: owner) { bodyAlts.append(l) } }
                if bodyAlts.isEmpty { return nil }
                if bodyAlts.count == 1 { return bodyAlts[0] }
                let r = try newRule(owner)
                try setBody(r, bodyAlts)
                return [Int32(r) * 2 + 1]
            case let .rep(x, lo, hi):
                guard let body = try lower(x, owner: owner) else { return lo == 0 ? [] : nil }
                // One element for x.
                let item: Int32
                if body.count == 1 { item = body[0] } else {
                    let r = try newRule(owner)
                    try setBody(r, [body])
                    item = Int32(r) * 2 + 1
                }
                var out = [Int32](repeating: item, count: lo)
                if let hi {
                    if hi > lo {
                        // R_1 ::= x | ε ; R_k ::= x R_{k-1} | ε
                        var prev: Int32? = nil
                        for _ in 0..<(hi - lo) {
                            let r = try newRule(owner)
                            try setBody(r, [prev.map { [item, $0] } ?? [item], []])
                            prev = Int32(r) * 2 + 1
                        }
                        out.append(prev!)
                    }
                } else {
                    let r = try newRule(owner)
                    try setBody(r, [[item, Int32(r) * 2 + 1], []])
                    out.append(Int32(r) * 2 + 1)
                }
                elementCount += out.count
                if elementCount > limits.maxElements { throw fail("the grammar needs more than \(limits.maxElements) elements") }
                return out
            }
        }
    }

    static func compile(_ text: String, limits: GrammarLimits = GrammarLimits()) throws -> ByteGrammar {
        var p = Parser(text, limits: limits)
        let parsed = try p.rules()
        guard !parsed.isEmpty else { throw fail("no rules") }
        var lw = Lowerer(limits: limits)
        for (n, _, at) in parsed {
            let r = lw.rule(named: n)
            if lw.defined[r] { throw fail("\(p.position(at)): rule '\(n)' is defined twice") }
            lw.defined[r] = true
        }
        guard let root = lw.ruleIndex["root"] else { throw fail("no rule named 'root'") }
        for (n, body, _) in parsed {
            let r = lw.ruleIndex[n]!
            var alts: [[Int32]] = []
            if case let .alt(xs) = body {
                for x in xs { if let l = try lw.lower(x, owner: n) { alts.append(l) } }
            } else if let l = try lw.lower(body, owner: n) {
                alts.append(l)
            }
            try lw.setBody(r, alts)
        }
        for (n, r) in lw.ruleIndex where !lw.defined[r] {
            throw fail("\(p.position(lw.refLines[n] ?? 0)): rule '\(n)' is used but not defined")
        }
        var g = lw.g
        g.root = root
        let bodies = try check(lw.bodies, names: g.names, root: root)
        for alts in bodies {
            var starts: [Int32] = []
            for a in alts {
                starts.append(Int32(g.elems.count))
                g.elems += a
                g.elems.append(ByteGrammar.end)
            }
            g.alts.append(starts)
        }
        return g
    }

    /// Left recursion is refused; alternatives that can never finish (they use a rule with no finite sentence)
    /// are dropped; `root` must have a finite sentence.
    static func check(_ bodiesIn: [[[Int32]]], names: [String], root: Int) throws -> [[[Int32]]] {
        let n = bodiesIn.count
        // Productive rules: fixpoint.
        var productive = [Bool](repeating: false, count: n)
        var changed = true
        while changed {
            changed = false
            for r in 0..<n where !productive[r] {
                if bodiesIn[r].contains(where: { a in a.allSatisfy { $0 & 1 == 0 || productive[Int($0 >> 1)] } }) {
                    productive[r] = true
                    changed = true
                }
            }
        }
        guard productive[root] else {
            throw fail("rule 'root' has no finite sentence (every alternative needs a rule that never ends)")
        }
        let bodies = bodiesIn.map { alts in alts.filter { a in a.allSatisfy { $0 & 1 == 0 || productive[Int($0 >> 1)] } } }
        // Nullable rules: fixpoint.
        var nullable = [Bool](repeating: false, count: n)
        changed = true
        while changed {
            changed = false
            for r in 0..<n where !nullable[r] {
                if bodies[r].contains(where: { a in a.allSatisfy { $0 & 1 == 1 && nullable[Int($0 >> 1)] } }) {
                    nullable[r] = true
                    changed = true
                }
            }
        }
        // Left-corner graph: r -> s when s can be the first thing r expands to.
        var edges = [[Int]](repeating: [], count: n)
        for r in 0..<n {
            for a in bodies[r] {
                for e in a {
                    guard e & 1 == 1 else { break }
                    edges[r].append(Int(e >> 1))
                    if !nullable[Int(e >> 1)] { break }
                }
            }
        }
        // Cycle detection (iterative DFS).
        var color = [UInt8](repeating: 0, count: n)
        for start in 0..<n where color[start] == 0 {
            var stack: [(Int, Int)] = [(start, 0)]
            color[start] = 1
            while let (r, k) = stack.last {
                if k < edges[r].count {
                    stack[stack.count - 1].1 += 1
                    let s = edges[r][k]
                    if color[s] == 1 {
                        let from = stack.firstIndex { $0.0 == s } ?? 0
                        let shown = stack[from...].map { names[$0.0] } + [names[s]]
                        throw fail("left recursion: \(shown.prefix(8).joined(separator: " -> ")) (rewrite it with repetition)")
                    }
                    if color[s] == 0 { color[s] = 1; stack.append((s, 0)) }
                } else {
                    color[r] = 2
                    stack.removeLast()
                }
            }
        }
        return bodies
    }
}
