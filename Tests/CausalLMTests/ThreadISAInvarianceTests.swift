import Foundation
import XCTest
import CausalKernels
import CausalLM

/// Model-level invariance across thread counts (1, 2, 3) and ISA levels (every level this CPU has, forced with
/// ck_set_isa and its clamped return checked): the same inputs give the same logits / hidden states bit for bit.
/// The kernels are checked level by level in CausalKernelsTests; this checks whole models, so that no layer picks a
/// different reduction order by thread count or level. A level the kernels have but this CPU lacks is reported as a
/// skip (XCTSkip at the end of the test, after every available level was compared), never as a pass.
/// `CAUSAL_TEST_MAX_ISA=N` lowers the best level used here (to see the skip path on a CPU that has them all).
final class ThreadISAInvarianceTests: XCTestCase {
    static let threadCounts = [1, 2, 3]
    static let isaNames = ["scalar", "avx2", "avx512"]

    static var levels: [Int32] {
        var best = ck_cpu_isa()
        if let s = ProcessInfo.processInfo.environment["CAUSAL_TEST_MAX_ISA"], let cap = Int32(s) { best = max(0, min(best, cap)) }
        return Array(0...best)
    }

    /// Runs `body` at every (threads, level) pair through `make(threads)`, compares every result's bits with the first
    /// (threads 1, the best level), then reports the levels that ran and skips if one is missing.
    func check<M>(_ label: String, make: (Int) throws -> M, body: (M) throws -> [[Float]]) throws {
        defer { ck_set_isa(-1) }
        var reference: [[UInt32]]?
        var ran: [String] = []
        for threads in Self.threadCounts {
            let model = try make(threads)
            for level in Self.levels.reversed() {
                let got = ck_set_isa(level)
                XCTAssertEqual(got, level, "ck_set_isa(\(level)) returned \(got)")
                guard got == level else { continue }
                let out = try body(model).map { $0.map(\.bitPattern) }
                let name = "\(threads) thread(s), \(Self.isaNames[Int(level)])"
                ran.append(name)
                guard let ref = reference else { reference = out; continue }
                XCTAssertEqual(out.count, ref.count, "\(label): \(name)")
                for (i, (a, b)) in zip(out, ref).enumerated() where a != b {
                    let k = a.indices.first { $0 >= b.count || a[$0] != b[$0] } ?? min(a.count, b.count)
                    XCTFail("\(label): output \(i) differs in bits with \(name) at element \(k) of \(a.count)")
                    break
                }
            }
        }
        XCTAssertEqual(ran.count, Self.threadCounts.count * Self.levels.count)
        let missing = Self.isaNames[(Self.levels.count)...]
        print("[threads x isa] \(label): \(ran.count) configurations equal bit for bit (\(ran.joined(separator: "; ")))"
              + (missing.isEmpty ? "" : "; skipped \(missing.joined(separator: ", ")) (not available)"))
        if !missing.isEmpty {
            throw XCTSkip("\(label): \(missing.joined(separator: ", ")) not available on this CPU; compared the other levels only")
        }
    }

    /// All-position logits of each prompt alone, then of all of them in one ragged batch.
    static func decoderLogits(_ model: any LanguageModel, _ prompts: [[Int]]) throws -> [[Float]] {
        var out = try prompts.map { p in
            try model.forward([SequenceChunk(cache: model.makeCache(capacity: 256), tokens: p, logits: .all)])[0]
        }
        out += try model.forward(prompts.map { SequenceChunk(cache: model.makeCache(capacity: 256), tokens: $0, logits: .all) })
        return out
    }

    static func smolLM2Prompts() throws -> [[Int]] {
        let rows = try XCTUnwrap(Fixtures.json("smollm2/logits.json") as? [[String: Any]])
        return try rows.map { try XCTUnwrap($0["ids"] as? [Int]) }
    }

    static func tinyRows(_ name: String, key: String = "rows") throws -> [[Int]] {
        let r = try XCTUnwrap(Fixtures.json("tiny/\(name)/refs.json") as? [String: Any])
        return try XCTUnwrap(r[key] as? [[Int]])
    }

    func testSmolLM2Fast() throws {
        let prompts = try Self.smolLM2Prompts()
        try check("SmolLM2 fast", make: { try ModelBundle(path: TestModel.path, precision: .fast, threads: $0) }) {
            try Self.decoderLogits($0.model, prompts)
        }
    }

    func testSmolLM2Reference() throws {
        let prompts = try Self.smolLM2Prompts()
        try check("SmolLM2 reference", make: { try ModelBundle(path: TestModel.path, precision: .reference, threads: $0) }) {
            try Self.decoderLogits($0.model, prompts)
        }
    }

    func testTinyGPT2() throws {
        let rows = try Self.tinyRows("gpt2")
        for precision in Precision.allCases {
            try check("tiny GPT-2 \(precision)",
                      make: { try ModelBundle(path: Fixtures.url("tiny/gpt2").path, precision: precision, threads: $0) }) {
                try Self.decoderLogits($0.model, rows)
            }
        }
    }

    func testTinyT5() throws {
        let rows = try Self.tinyRows("t5", key: "encoder_rows")
        let decoder = [0, 7, 8, 9]
        try check("tiny T5", make: { try T5Model(directory: Fixtures.url("tiny/t5").path, pool: ThreadPool(threads: $0)) }) { m in
            // Each row alone, then all rows in one batch (encoder and decoder).
            var out = try rows.map { row in
                try m.forward([SequenceChunk(cache: m.makeCaches(encoderInputs: [row])[0], tokens: decoder, logits: .all)])[0]
            }
            let caches = try m.makeCaches(encoderInputs: rows)
            out += try m.forward(caches.map { SequenceChunk(cache: $0, tokens: decoder, logits: .all) })
            return out
        }
    }

    func testMiniLM() throws {
        let texts = try MiniLM.cases().map(\.text)
        try check("all-MiniLM-L6-v2", make: { try EmbeddingModel(directory: MiniLM.directory, threads: $0) }) { m in
            try texts.map { try m.embed([$0])[0] } + m.embed(texts) + m.model.lastHidden(texts.map { m.tokenize($0) })
        }
    }
}
