import Foundation
import XCTest
import CausalLM

/// Training from scratch: the architecture from a config.json (errors name the field) and transformers'
/// LlamaForCausalLM initialisation, reproducible by seed.
final class LlamaInitTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-init-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func writeConfig(_ json: String, name: String = "config.json") throws -> String {
        let p = dir + "/" + name
        try json.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    static let tiny = """
    {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
     "tie_word_embeddings": false}
    """

    func testArchitectureFromConfig() throws {
        let a = try LlamaArchitecture(path: try writeConfig(Self.tiny), vocabularySize: 1000)
        XCTAssertEqual(a.config, LlamaConfig(vocabularySize: 1000, hiddenSize: 64, intermediateSize: 96, layerCount: 2,
                                             headCount: 4, kvHeadCount: 2, headDim: 16, ropeDim: 16, ropeTheta: 10000,
                                             rmsNormEps: 1e-5, contextLength: 256))
        XCTAssertFalse(a.tiedEmbeddings)
        XCTAssertEqual(a.initializerRange, 0.02)
        // vocab_size equal to the tokenizer's is accepted; tie_word_embeddings and initializer_range are read.
        let b = try LlamaArchitecture(path: try writeConfig(#"{"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "tie_word_embeddings": true, "initializer_range": 0.05}"#, name: "b.json"), vocabularySize: 1000)
        XCTAssertEqual(b.config.kvHeadCount, 2)
        XCTAssertEqual(b.config.rmsNormEps, 1e-6)          // transformers' LlamaConfig default
        XCTAssertEqual(b.config.contextLength, 2048)
        XCTAssertTrue(b.tiedEmbeddings)
        XCTAssertEqual(b.initializerRange, 0.05)
    }

    func testConfigErrorsNameTheField() throws {
        let base = #""hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4"#
        let cases: [(String, String)] = [
            (#"{"vocab_size": 999, \#(base)}"#, "vocab_size"),
            (#"{"hidden_size": "big", "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}"#, "hidden_size"),
            (#"{"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4}"#, "num_hidden_layers"),
            (#"{\#(base), "num_key_value_heads": 3}"#, "num_key_value_heads"),
            (#"{\#(base), "tie_word_embeddings": "yes"}"#, "tie_word_embeddings"),
            (#"{\#(base), "initializer_range": -1}"#, "initializer_range"),
            (#"{\#(base), "rms_norm_eps": 0}"#, "rms_norm_eps"),
            (#"{\#(base), "model_type": "gpt2"}"#, "model_type"),
            (#"{"hidden_size": 64, "intermediate_size": 0, "num_hidden_layers": 2, "num_attention_heads": 4}"#, "intermediate_size"),
        ]
        for (i, (json, field)) in cases.enumerated() {
            let path = try writeConfig(json, name: "bad\(i).json")
            XCTAssertThrowsError(try LlamaArchitecture(path: path, vocabularySize: 1000), field) { e in
                let text = "\(e)"
                XCTAssertTrue(text.contains(field), "\(field): \(text)")
                XCTAssertTrue(text.contains(path), "\(field) names the file: \(text)")
            }
        }
        XCTAssertThrowsError(try LlamaArchitecture(path: dir + "/missing.json", vocabularySize: 1000)) {
            XCTAssertTrue("\($0)".contains("missing.json"), "\($0)")
        }
        XCTAssertThrowsError(try LlamaArchitecture(path: try writeConfig("[1, 2]", name: "array.json"), vocabularySize: 1000))
    }

    func testSameSeedSameParametersOtherSeedOthers() throws {
        let arch = try LlamaArchitecture(path: try writeConfig(Self.tiny), vocabularySize: 1000)
        let a = LlamaParameters(initializing: arch, seed: 7, paddingTokenID: 2)
        let b = LlamaParameters(initializing: arch, seed: 7, paddingTokenID: 2)
        let c = LlamaParameters(initializing: arch, seed: 8, paddingTokenID: 2)
        XCTAssertEqual(a.count, b.count)
        XCTAssertEqual(memcmp(a.data, b.data, a.count * 4), 0, "same seed, same bits")
        var differ = 0
        for t in a.tensors where t.shape.count == 2 {
            let (x, y) = (a.values(t), c.values(t))
            for i in 0..<t.count where x[i] != y[i] { differ += 1 }
        }
        let matrixCount = a.tensors.filter { $0.shape.count == 2 }.reduce(0) { $0 + $1.count }
        XCTAssertGreaterThan(differ, matrixCount - 64 - 5, "another seed draws other weights (all but the zeroed pad row)")
    }

    /// Every matrix ~ normal(0, initializer_range), the pad row zero, every norm weight 1.
    func testInitialisationIsTransformers() throws {
        let arch = try LlamaArchitecture(path: try writeConfig(Self.tiny), vocabularySize: 1000)
        let p = LlamaParameters(initializing: arch, seed: 1, paddingTokenID: 2)
        let C = arch.config.hiddenSize
        for t in p.tensors {
            let v = p.values(t)
            if t.shape.count == 1 {
                XCTAssertTrue(v.allSatisfy { $0 == 1 }, "\(t.name) is all ones")
                continue
            }
            var xs = Array(v)
            if t.name == "model.embed_tokens.weight" {
                XCTAssertTrue(xs[(2 * C)..<(3 * C)].allSatisfy { $0 == 0 }, "the pad row is zero")
                xs.removeSubrange((2 * C)..<(3 * C))
            }
            let n = Double(xs.count)
            let mean = xs.reduce(0.0) { $0 + Double($1) } / n
            let sd = (xs.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / n).squareRoot()
            let within = Double(xs.filter { abs($0) < 0.02 }.count) / n
            // Standard errors: mean 0.02/sqrt(n), sd 0.02/sqrt(2n), the one-sigma fraction sqrt(0.68*0.32/n); 5 of each.
            XCTAssertLessThan(abs(mean), 5 * 0.02 / n.squareRoot(), "\(t.name) mean \(mean)")
            XCTAssertLessThan(abs(sd - 0.02), 5 * 0.02 / (2 * n).squareRoot(), "\(t.name) sd \(sd)")
            XCTAssertLessThan(abs(within - 0.682689), 5 * (0.682689 * 0.317311 / n).squareRoot(), "\(t.name) within one sd \(within)")
        }
        // A tied head is the embedding itself (no separate tensor).
        let tied = LlamaArchitecture(config: arch.config, tiedEmbeddings: true, initializerRange: 0.1)
        let q = LlamaParameters(initializing: tied, seed: 1)
        XCTAssertNil(q.tensor("lm_head.weight"))
        XCTAssertEqual(q.count, p.count - 1000 * C)
    }
}
