import Foundation
import XCTest
import CausalLM

/// A Hugging Face T5 directory through `ModelBundle`, the one entry point every model goes through: it loads as an
/// encoder-decoder model, and its generator returns only decoder tokens, equal to transformers' greedy output.
final class T5BundleTests: XCTestCase {
    static let dir = Fixtures.url("tiny/t5").path

    func testBundleLoadsT5AndGeneratesHFGreedy() throws {
        let r = try XCTUnwrap(Fixtures.json("tiny/t5/refs.json") as? [String: Any])
        let rows = try XCTUnwrap(r["encoder_rows"] as? [[Int]])
        let greedy = try XCTUnwrap(r["greedy_single"] as? [[Int]])

        let bundle = try ModelBundle(path: Self.dir, threads: 2)
        XCTAssertTrue(bundle.isEncoderDecoder)
        XCTAssertTrue(try ModelBundle.isEncoderDecoder(path: Self.dir))
        XCTAssertFalse(try ModelBundle.isEncoderDecoder(path: Fixtures.url("tiny/gpt2").path))
        let model = try XCTUnwrap(bundle.model as? T5Model)
        XCTAssertEqual(model.decoderStartTokenID, 0)
        XCTAssertEqual(bundle.endTokenIDs, [1])
        XCTAssertEqual(bundle.padTokenID, 0)
        XCTAssertNil(bundle.textTokenizer)
        XCTAssertThrowsError(try bundle.tokenizer) { e in
            XCTAssertTrue("\(e)".contains("tokenizer") && "\(e)".contains("input_ids"), "\(e)")
        }

        // One ragged batch of all rows (no padding), and each row alone: HF's tokens, bit-identical results.
        let params = GenerateParameters(maxNewTokens: 16, minNewTokens: 16)
        let g = bundle.makeGenerator()
        let batch = try g.generate(rows.map { SequenceRequest(encoderInput: $0, parameters: params) })
        for (i, row) in rows.enumerated() {
            XCTAssertEqual(batch[i].tokens, greedy[i], "row \(i)")
            XCTAssertEqual(batch[i].finishReason, .length)
            XCTAssertEqual(batch[i].promptTokens, row.count + 1)
            XCTAssertEqual(try g.generate([SequenceRequest(encoderInput: row, parameters: params)])[0], batch[i], "row \(i) alone")
        }
        // The bundle's end ids stop a sequence: ending on row 1's fourth token stops there with reason .stop.
        g.endTokenIDs = [greedy[1][3]]
        let stopped = try g.generate([SequenceRequest(encoderInput: rows[1], parameters: GenerateParameters(maxNewTokens: 16))])[0]
        XCTAssertEqual(stopped.tokens, Array(greedy[1].prefix(4)))
        XCTAssertEqual(stopped.finishReason, .stop)
        // A decoder-only request (no encoder input) is a clear error, not a crash.
        XCTAssertThrowsError(try bundle.makeGenerator().generate([SequenceRequest(prompt: rows[0], parameters: params)])) { e in
            XCTAssertTrue("\(e)".contains("encoder input"), "\(e)")
        }
    }

    /// Without `model_type`, the architecture name picks T5; a T5 directory with the wrong model_type is not T5.
    func testArchitecturesAloneSelectT5() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("t5-arch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let src = Fixtures.url("tiny/t5")
        try FileManager.default.copyItem(at: src.appendingPathComponent("model.safetensors"), to: tmp.appendingPathComponent("model.safetensors"))
        var config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: src.appendingPathComponent("config.json"))) as? [String: Any])
        config["model_type"] = nil
        try JSONSerialization.data(withJSONObject: config).write(to: tmp.appendingPathComponent("config.json"))
        let bundle = try ModelBundle(path: tmp.path, threads: 2)
        XCTAssertTrue(bundle.model is T5Model)
        XCTAssertEqual(bundle.endTokenIDs, [1])   // from config.json (no generation_config.json here)

        config["model_type"] = "bart"
        try JSONSerialization.data(withJSONObject: config).write(to: tmp.appendingPathComponent("config.json"))
        XCTAssertThrowsError(try ModelBundle(path: tmp.path, threads: 2)) { e in
            XCTAssertTrue("\(e)".contains("model_type") && "\(e)".contains("bart"), "\(e)")
        }
    }
}
