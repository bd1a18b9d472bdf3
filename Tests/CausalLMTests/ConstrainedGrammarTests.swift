import Foundation
import XCTest
import CausalLM

/// The grammar format, its compiler's errors, and the byte-level recognizer (no model run: `matches` walks bytes).
final class ConstrainedGrammarTests: XCTestCase {
    var tokenizer: any TextTokenizer { ConstrainedModel.tokenizer }

    func grammar(_ text: String) throws -> GrammarConstraint { try GrammarConstraint(grammar: text, tokenizer: tokenizer) }

    func message(_ text: String) -> String {
        do { _ = try grammar(text); return "no error" } catch let e as CausalError {
            guard case .invalidArgument = e else { return "wrong case: \(e)" }
            return e.description
        } catch { return "unexpected \(error)" }
    }

    func testParseErrorsNameTheProblem() {
        XCTAssertTrue(message("start ::= \"a\"").contains("no rule named 'root'"), message("start ::= \"a\""))
        XCTAssertTrue(message("root ::= \"a\" item").contains("rule 'item' is used but not defined"))
        XCTAssertTrue(message("root ::= \"a\" item").contains("line 1 column 14"), message("root ::= \"a\" item"))
        XCTAssertTrue(message("root ::= \"abc").contains("unterminated string literal"))
        XCTAssertTrue(message("root ::= [a-").contains("unterminated character class"))
        XCTAssertTrue(message("root ::= [z-a]").contains("reversed"))
        XCTAssertTrue(message("root ::= \"\\q\"").contains("unknown escape"))
        XCTAssertTrue(message("root ::= ( \"a\" ").contains("expected ')'"))
        XCTAssertTrue(message("root ::= \"a\"{3,2}").contains("maximum is below the minimum"))
        XCTAssertTrue(message("root ::= \"a\"{5000}").contains("exceeds the limit 1000"))
        XCTAssertTrue(message("root ::= \"a\"\nroot ::= \"b\"").contains("line 2 column 1: rule 'root' is defined twice"))
        XCTAssertTrue(message("root ::= \"a\" ; ").contains("unexpected character ';'"))
        XCTAssertTrue(message("root ::= \"\\uD800\"").contains("not a character"))
        // Left recursion, direct and through a rule that can match nothing.
        XCTAssertTrue(message("root ::= root \"a\" | \"b\"").contains("left recursion: root -> root"), message("root ::= root \"a\" | \"b\""))
        let indirect = "root ::= opt list\nopt ::= \"x\"?\nlist ::= root \"y\" | \"z\""
        XCTAssertTrue(message(indirect).contains("left recursion"), message(indirect))
        XCTAssertTrue(message("root ::= (\"a\"?)*").contains("left recursion"), message("root ::= (\"a\"?)*"))
        // No finite sentence.
        XCTAssertTrue(message("root ::= \"a\" root").contains("no finite sentence"))
    }

    func testRecognizer() throws {
        let g = try grammar("""
        # a comment
        root ::= greeting ( " " name )* "!"?   # trailing comment
        greeting ::= "hi" | "hello"
        name ::= [A-Z] [a-z]{1,3}
        """)
        for ok in ["hi", "hello", "hi Bob", "hello Al Bea!", "hi Abcd!"] { XCTAssertTrue(g.matches(ok), ok) }
        for bad in ["", "h", "hi bob", "hi Abcde", "hi B", "hello!!", "hi  Bob", "hey"] { XCTAssertFalse(g.matches(bad), bad) }
        XCTAssertTrue(g.acceptsPrefix(Array("hello Al".utf8)))
        XCTAssertFalse(g.acceptsPrefix(Array("hello al".utf8)))

        // Classes with negation and non-ASCII characters, matched byte by byte (a prefix may end inside a character).
        let u = try grammar("root ::= [^a-z\"] [é€-€] \"😀\"? .")
        XCTAssertTrue(u.matches("Xéz"))
        XCTAssertTrue(u.matches("ß€😀\u{10FFFF}"))
        XCTAssertFalse(u.matches("xéz"))
        XCTAssertFalse(u.matches("\"éz"))
        XCTAssertFalse(u.matches("Xez"))
        XCTAssertTrue(u.acceptsPrefix([0x58, 0xC3]))         // "X" and the first byte of "é"
        XCTAssertFalse(u.acceptsPrefix([0x58, 0xC3, 0xA8]))  // "è" is not in the class
        XCTAssertTrue(u.acceptsPrefix([0x58, 0xE2, 0x82]))   // first two bytes of "€"
        XCTAssertFalse(u.acceptsPrefix([0x58, 0xE2, 0x81]))

        let rep = try grammar("root ::= \"a\"{2} \"b\"{1,} \"c\"{0,2} (\"d\" | \"e\")+ \"\\x41\\u00e9\\n\"")
        XCTAssertTrue(rep.matches("aabde" + "Aé\n"))
        XCTAssertTrue(rep.matches("aabbbccdeed" + "Aé\n"))
        XCTAssertFalse(rep.matches("abde" + "Aé\n"))
        XCTAssertFalse(rep.matches("aabcccd" + "Aé\n"))
        XCTAssertFalse(rep.matches("aab" + "Aé\n"))

        // Alternatives that can never finish are dropped instead of trapping the model.
        let pruned = try grammar("root ::= \"x\" | \"y\" loop\nloop ::= \"z\" loop")
        XCTAssertTrue(pruned.matches("x"))
        XCTAssertFalse(pruned.acceptsPrefix(Array("y".utf8)))
    }

    /// Character classes are compiled to UTF-8 byte ranges: every scalar's membership must be the class's.
    func testClassesAgainstScalarMembership() throws {
        var rng = SequenceRNG(seed: 7)
        let interesting: [UInt32] = [0, 0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x10FFFF, 0x3BF, 0x1F600]
        for _ in 0..<12 {
            var ranges: [(UInt32, UInt32)] = []
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let a = interesting[Int(rng.next() % UInt64(interesting.count))] &+ UInt32(rng.next() % 300)
                let b = a &+ UInt32(rng.next() % 70000)
                let lo = min(a, 0x10FFFF), hi = min(b, 0x10FFFF)
                if lo >= 0xD800 && lo <= 0xDFFF || hi >= 0xD800 && hi <= 0xDFFF { continue }
                ranges.append((lo, hi))
            }
            if ranges.isEmpty { continue }
            let negated = rng.next() % 2 == 0
            let cls = ranges.map { String(format: "\\U%08X-\\U%08X", $0.0, $0.1) }.joined()
            let g = try grammar("root ::= [\(negated ? "^" : "")\(cls)]")
            var probes = interesting + ranges.flatMap { [$0.0, $0.1, $0.0 &- 1, $0.1 &+ 1, ($0.0 + $0.1) / 2] }
            for _ in 0..<200 { probes.append(UInt32(rng.next() % 0x110000)) }
            for p in probes {
                guard let scalar = Unicode.Scalar(p) else { continue }
                let inside = ranges.contains { p >= $0.0 && p <= $0.1 } != negated
                XCTAssertEqual(g.matches(String(scalar)), inside, "U+\(String(p, radix: 16)) in [\(negated ? "^" : "")\(cls)]")
            }
        }
    }

    func testMaskAllowsExactlyTheViableTokens() throws {
        let g = try grammar("root ::= \"{\\\"a\\\": \" [0-9]+ \"}\"")
        var state = g.makeState()
        let V = ConstrainedModel.bundle.model.vocabularySize
        let tok = tokenizer
        let end: Set<Int> = [tok.eosTokenID ?? 0]
        var logits = [Float](repeating: 0, count: V)
        state.mask(&logits, endTokenIDs: end)
        // The allowed set, checked token by token against the recognizer.
        var allowed = 0
        for id in 0..<V {
            let bytes = tok.isSpecial(id) ? [] : tok.tokenBytes(id)
            let viable = !bytes.isEmpty && g.acceptsPrefix(bytes)
            XCTAssertEqual(logits[id] != -.infinity, viable, "token \(id) \(tok.tokenText(id).debugDescription)")
            if viable { allowed += 1 }
        }
        XCTAssertGreaterThan(allowed, 0)
        XCTAssertTrue(logits[end.first!] == -.infinity)
        // Walk a full sentence token by token; end tokens become allowed only at the end.
        let ids = try tok.encode("{\"a\": 42}").filter { !tok.isSpecial($0) }
        for (k, id) in ids.enumerated() {
            var l = [Float](repeating: 0, count: V)
            state.mask(&l, endTokenIDs: end)
            XCTAssertNotEqual(l[id], -.infinity, "token \(k)")
            state.advance(id)
        }
        XCTAssertTrue(state.isComplete)
    }
}
