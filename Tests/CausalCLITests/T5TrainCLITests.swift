import Foundation
import XCTest

/// `causal train` / `causal eval` on encoder-decoder models, end to end: the tiny random T5 of Tests/Fixtures/tiny/t5
/// with `{"input_ids", "labels"}` lines (it has no tokenizer), and Tests/Fixtures/tiny/t5-text (the same weights with a
/// T5 Unigram tokenizer.json) with `{"prompt", "response"}` text lines.
final class T5TrainCLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let model = fixtures.appendingPathComponent("tiny/t5").path
    static let textModel = fixtures.appendingPathComponent("tiny/t5-text").path
    var dir = ""

    func causal(_ args: [String]) throws -> CLITests.Output {
        try runCausal(args)
    }

    final class ErrBox: @unchecked Sendable { var data = Data() }

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-t5-train-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ name: String, _ lines: [String]) throws -> String {
        let p = dir + "/" + name
        try (lines.joined(separator: "\n") + "\n").write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func json(_ object: [String: Any]) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
    }

    func metrics(_ out: String) throws -> [[String: Any]] {
        try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    func trainLosses(_ m: [[String: Any]]) -> [Int: Double] {
        var d: [Int: Double] = [:]
        for l in m { if let s = l["step"] as? Int, let v = l["loss"] as? Double { d[s] = v } }
        return d
    }

    func evalJSON(_ args: [String]) throws -> [String: Any] {
        let r = try causal(["eval", "--json", "--threads", "2"] + args)
        XCTAssertEqual(r.status, 0, r.stderr)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
    }

    /// The fixture's SFT pairs (HF's loss 214.2289581 on them) as id lines.
    func idLines() throws -> [String] {
        let r = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.model + "/refs.json"))) as? [String: Any])
        let rows = try XCTUnwrap(r["encoder_rows"] as? [[Int]])
        return rows.map { json(["input_ids": $0, "labels": [7, 8, 9, 1]]) }
    }

    /// Four steps on id pairs: the loss falls, the checkpoint is a T5 directory that `causal eval` and
    /// `causal generate` load, eval of the base model gives HF's loss, and a run stopped at step 2 and resumed gives
    /// the identical losses for steps 3 and 4.
    func testIDPairsTrainEvalResume() throws {
        let data = try write("ids.jsonl", try idLines() + [json(["input_ids": [4, 5, 6], "labels": [40, -100, 41, 1]])])
        // The base model's loss over the fixture pairs is HF's.
        let hfOnly = try write("hf.jsonl", try idLines())
        let base = try evalJSON(["--model", Self.model, "--data", hfOnly])
        let baseLoss = try XCTUnwrap(base["loss"] as? Double)
        print(String(format: "causal eval (tiny T5, fixture pairs): %.7f, HF 214.2289581", baseLoss))
        XCTAssertEqual(baseLoss, 214.2289581298828, accuracy: 1e-4 * 214.2289581298828)
        XCTAssertEqual(base["scored_tokens"] as? Int, 12)
        XCTAssertEqual(base["examples"] as? Int, 3)

        let common = ["train", "--model", Self.model, "--data", data, "--lr", "2e-3", "--warmup", "4", "--threads", "2"]
        let full = dir + "/full"
        let r = try causal(common + ["--steps", "4", "--eval-data", data, "--out", full])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("T5 encoder-decoder"), r.stderr)
        let m = try metrics(full)
        let losses = trainLosses(m)
        XCTAssertEqual(losses.keys.sorted(), [1, 2, 3, 4])
        print("t5 train losses: \((1...4).map { String(format: "%.4f", losses[$0]!) })")
        XCTAssertEqual(losses[1]!, losses[2]!, accuracy: 1e-9 * losses[1]!)   // lr 0 at step 1 (warmup)
        XCTAssertLessThan(losses[3]!, losses[2]!)
        XCTAssertLessThan(losses[4]!, losses[3]!)
        for f in ["model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json", "metrics.jsonl", "loss.svg",
                  "generation_config.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: full + "/" + f), f)
        }
        let state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: full + "/trainer_state.json"))) as? [String: Any])
        XCTAssertEqual(state["architecture"] as? String, "t5")
        XCTAssertEqual(state["step"] as? Int, 4)

        // eval of the checkpoint = the trainer's eval at the end; the base model's loss = step 1's.
        let evalLine = try XCTUnwrap(m.last { $0["eval_loss"] != nil })
        let evalLoss = try XCTUnwrap(evalLine["eval_loss"] as? Double)
        let e = try evalJSON(["--model", full, "--data", data])
        XCTAssertEqual(try XCTUnwrap(e["loss"] as? Double), evalLoss, accuracy: 1e-12 * evalLoss)
        XCTAssertEqual(e["scored_tokens"] as? Int, 15)
        let b = try evalJSON(["--model", Self.model, "--data", data])
        XCTAssertEqual(try XCTUnwrap(b["loss"] as? Double), losses[1]!, accuracy: 1e-9 * losses[1]!)
        XCTAssertLessThan(evalLoss, losses[1]!)

        // The checkpoint generates like any T5 directory.
        let gen = try write("gen.jsonl", [json(["input_ids": [5, 17, 99, 3, 42, 7, 250]])])
        let g = try causal(["generate", "--model", full, "--input", gen, "--max-tokens", "4", "--min-tokens", "4", "--json"])
        XCTAssertEqual(g.status, 0, g.stderr)
        let go = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(g.stdout.utf8)) as? [String: Any], g.stdout)
        XCTAssertEqual((go["tokens"] as? [Int])?.count, 4)

        // Stop at step 2, resume to step 4.
        let half = dir + "/half", rest = dir + "/rest"
        let h = try causal(common + ["--steps", "2", "--out", half])
        XCTAssertEqual(h.status, 0, h.stderr)
        let res = try causal(common + ["--steps", "4", "--resume", half, "--out", rest])
        XCTAssertEqual(res.status, 0, res.stderr)
        XCTAssertTrue(res.stderr.contains("resuming at step 2"), res.stderr)
        let first = trainLosses(try metrics(half)), second = trainLosses(try metrics(rest))
        XCTAssertEqual(first[1], losses[1]); XCTAssertEqual(first[2], losses[2])
        XCTAssertEqual(second.keys.sorted(), [3, 4])
        XCTAssertEqual(second[3], losses[3], "resumed step 3")
        XCTAssertEqual(second[4], losses[4], "resumed step 4")
    }

    func testBadInputIsNamed() throws {
        let out = dir + "/out"
        func fails(_ lines: [String], _ extra: [String] = [], _ expect: [String], file: StaticString = #filePath, line: UInt = #line) throws {
            let data = try write("bad.jsonl", lines)
            let r = try causal(["train", "--model", Self.model, "--data", data, "--steps", "1", "--out", out] + extra)
            XCTAssertNotEqual(r.status, 0, file: file, line: line)
            for e in expect { XCTAssertTrue(r.stderr.contains(e), "expected '\(e)' in: \(r.stderr)", file: file, line: line) }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/model.safetensors"), file: file, line: line)
        }
        let ok = try idLines()[0]
        // Text without a tokenizer: the line, and what to give instead.
        try fails([ok, #"{"prompt": "hello", "response": "world"}"#], [], ["bad.jsonl", "line 2", "tokenizer", "input_ids"])
        try fails([ok, #"{"input_ids": [1, 2, 1000], "labels": [1]}"#], [], ["line 2", "input_ids[2] = 1000 is outside the vocabulary"])
        try fails([#"{"input_ids": [1, 2]}"#], [], ["line 1", "missing field 'labels'"])
        try fails([ok, #"{"messages": [{"role": "user", "content": "x"}]}"#], [], ["line 2", "encoder-decoder"])
        try fails([ok, #"{"input_ids": [1, "a"], "labels": [1]}"#], [], ["line 2", "input_ids[1] must be an integer"])
        try fails([#"{"input_ids": [3], "labels": [-100]}"#], [], ["all 1 examples were skipped"])
        try fails([ok], ["--attention", "prefix"], ["--attention applies to decoder-only models"])
        try fails([ok], ["--train-on-prompt"], ["--train-on-prompt applies to decoder-only models"])
    }

    /// Text pairs on a T5 directory with a tokenizer.json: prompt → encoder ids with </s>, response → labels with </s>,
    /// the same ids as Hugging Face's tokenizer (refs.json of tiny/t5-text: `tokenizer(text).input_ids`), so eval of
    /// the text lines equals eval of those ids; the checkpoint carries tokenizer.json and evaluates text itself.
    func testTextPairsTokenizeAsHF() throws {
        let refs = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.textModel + "/refs.json"))) as? [String: Any])
        let cases = try XCTUnwrap(refs["cases"] as? [[String: Any]])
        let texts = try cases.map { try XCTUnwrap($0["text"] as? String) }, ids = try cases.map { try XCTUnwrap($0["ids"] as? [Int]) }
        XCTAssertTrue(ids.allSatisfy { $0.last == 1 }, "HF's T5 tokenizer ends every text with </s> (id 1)")
        let pairs = [(0, 1), (2, 3), (4, 5), (3, 0)]
        let text = try write("text.jsonl", pairs.map { json(["prompt": texts[$0.0], "response": texts[$0.1]]) })
        let idData = try write("ids.jsonl", pairs.map { json(["input_ids": ids[$0.0], "labels": ids[$0.1]]) })
        let t = try evalJSON(["--model", Self.textModel, "--data", text])
        let i = try evalJSON(["--model", Self.textModel, "--data", idData])
        XCTAssertEqual(t["scored_tokens"] as? Int, pairs.reduce(0) { $0 + ids[$1.1].count })
        XCTAssertEqual(try XCTUnwrap(t["loss"] as? Double), try XCTUnwrap(i["loss"] as? Double), "text and HF's ids give the same pairs")

        let out = dir + "/text-run"
        let r = try causal(["train", "--model", Self.textModel, "--data", text, "--steps", "3", "--lr", "2e-3", "--threads", "2", "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        let losses = trainLosses(try metrics(out))
        XCTAssertLessThan(losses[3]!, losses[1]!)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/tokenizer.json"), "the checkpoint carries its tokenizer")
        let after = try evalJSON(["--model", out, "--data", text])
        XCTAssertLessThan(try XCTUnwrap(after["loss"] as? Double), try XCTUnwrap(t["loss"] as? Double))
    }
}
