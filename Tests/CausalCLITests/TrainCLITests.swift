import Foundation
import XCTest

/// `causal train` and `causal eval` end to end on the default model: bad input, a short run whose loss falls,
/// `--resume` continuing with the identical loss curve, loss.svg, and `eval --json` agreeing with training's eval.
final class TrainCLITests: XCTestCase {
    var dir = ""

    /// Runs the built `causal` (as CLITests does), stdin closed.
    func causal(_ args: [String]) throws -> CLITests.Output {
        let p = Process()
        p.executableURL = CLITests.productsDirectory.appendingPathComponent("causal")
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        // Drain stderr on another thread so that neither pipe fills up and blocks the child.
        var e = Data()
        let g = DispatchGroup()
        g.enter()
        DispatchQueue.global().async { e = err.fileHandleForReading.readDataToEndOfFile(); g.leave() }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        g.wait()
        p.waitUntilExit()
        return CLITests.Output(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    override func setUpWithError() throws {
        if !FileManager.default.fileExists(atPath: CLITests.modelPath) {
            let r = try causal(["info"])   // fetches the default model
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-train-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    let pairs = [("What is the capital of France?", "The capital of France is Paris."),
                 ("Say hello in Spanish.", "Hola!"),
                 ("What colour is grass?", "Grass is green."),
                 ("How many legs does a spider have?", "A spider has eight legs.")]

    func writeData(_ name: String, _ lines: [String]) throws -> String {
        let p = dir + "/" + name
        try (lines.joined(separator: "\n") + "\n").write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func pairLines() -> [String] {
        pairs.map { p in
            let o = try! JSONSerialization.data(withJSONObject: ["prompt": p.0, "response": p.1], options: [.sortedKeys])
            return String(decoding: o, as: UTF8.self)
        }
    }

    func metrics(_ out: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    func trainLosses(_ m: [[String: Any]]) -> [Int: Double] {
        var d: [Int: Double] = [:]
        for l in m { if let s = l["step"] as? Int, let v = l["loss"] as? Double { d[s] = v } }
        return d
    }

    func testBadJSONLLineNamesTheLine() throws {
        var lines = pairLines()
        lines.insert(#"{"prompt": "unterminated"#, at: 2)
        let data = try writeData("bad.jsonl", lines)
        let out = dir + "/out"
        let r = try causal(["train", "--model", CLITests.modelPath, "--data", data, "--steps", "1", "--out", out])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("line 3"), r.stderr)
        XCTAssertTrue(r.stderr.contains("bad.jsonl"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/model.safetensors"))
        let missing = try writeData("missing.jsonl", [pairLines()[0], #"{"prompt": "no response here"}"#])
        let m = try causal(["eval", "--model", CLITests.modelPath, "--data", missing])
        XCTAssertNotEqual(m.status, 0)
        XCTAssertTrue(m.stderr.contains("line 2") && m.stderr.contains("response"), m.stderr)
    }

    func testEmptyDatasetAndUnwritableOut() throws {
        let empty = try writeData("empty.jsonl", ["", "   "])
        let r = try causal(["train", "--model", CLITests.modelPath, "--data", empty, "--steps", "1", "--out", dir + "/o1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("empty"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o1/model.safetensors"))

        let data = try writeData("ok.jsonl", pairLines())
        let file = try writeData("a-file", ["x"])
        for out in [file, file + "/sub"] {
            let w = try causal(["train", "--model", CLITests.modelPath, "--data", data, "--steps", "1", "--out", out])
            XCTAssertNotEqual(w.status, 0, out)
            XCTAssertTrue(w.stderr.contains(out) || w.stderr.contains(file), w.stderr)
            XCTAssertTrue(w.stderr.contains("--out"), w.stderr)
        }
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "x\n")   // untouched
    }

    /// Four steps on four pairs (linear warmup over all four, so that lr does not depend on the run's length):
    /// the loss falls, eval agrees with `causal eval --json`, and a run stopped at step 2 and resumed gives the
    /// identical losses for steps 3 and 4.
    func testShortRunLossFallsAndResumeIsIdentical() throws {
        let data = try writeData("pairs.jsonl", pairLines())
        let common = ["train", "--model", CLITests.modelPath, "--data", data, "--lr", "4e-5", "--warmup", "4", "--threads", "2"]
        let full = dir + "/full"
        let r = try causal(common + ["--steps", "4", "--eval-data", data, "--out", full])
        XCTAssertEqual(r.status, 0, r.stderr)
        let m = try metrics(full)
        let losses = trainLosses(m)
        XCTAssertEqual(losses.keys.sorted(), [1, 2, 3, 4])
        print("train losses: \((1...4).map { String(format: "%.4f", losses[$0]!) })")
        // lr is 0 at step 1 (warmup), so steps 1 and 2 see the same weights.
        XCTAssertEqual(losses[1]!, losses[2]!, accuracy: 1e-9)
        XCTAssertLessThan(losses[3]!, losses[2]!)
        XCTAssertLessThan(losses[4]!, losses[3]!)
        let evalLine = try XCTUnwrap(m.last { $0["eval_loss"] != nil })
        let evalLoss = try XCTUnwrap(evalLine["eval_loss"] as? Double)
        XCTAssertEqual(evalLine["step"] as? Int, 4)
        XCTAssertLessThan(evalLoss, losses[4]!)   // measured after the last update
        for f in ["model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json", "metrics.jsonl", "loss.svg"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: full + "/" + f), f)
        }
        let svg = try String(contentsOfFile: full + "/loss.svg", encoding: .utf8)
        for s in 1...4 { XCTAssertTrue(svg.contains(String(format: "<title>step %d: loss %.6f</title>", s, losses[s]!)), "step \(s) in loss.svg") }
        XCTAssertTrue(svg.contains(String(format: "<title>step 4: eval loss %.6f</title>", evalLoss)))

        // eval --json of the checkpoint (tokenizer from the recorded base model) and of the base model.
        let e = try causal(["eval", "--model", full, "--data", data, "--json", "--threads", "2"])
        XCTAssertEqual(e.status, 0, e.stderr)
        let ej = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as? [String: Any])
        let el = try XCTUnwrap(ej["loss"] as? Double)
        XCTAssertEqual(el, evalLoss, accuracy: 1e-6 * evalLoss)
        XCTAssertEqual(ej["perplexity"] as? Double ?? 0, exp(el), accuracy: 1e-9 * exp(el))
        XCTAssertEqual(ej["examples"] as? Int, 4)
        XCTAssertEqual(ej["skipped"] as? Int, 0)
        XCTAssertEqual(ej["scored_tokens"] as? Int, evalLine["eval_scored_tokens"] as? Int)
        let b = try causal(["eval", "--model", CLITests.modelPath, "--data", data, "--json", "--threads", "2"])
        let bl = try XCTUnwrap((JSONSerialization.jsonObject(with: Data(b.stdout.utf8)) as? [String: Any])?["loss"] as? Double)
        XCTAssertEqual(bl, losses[1]!, accuracy: 1e-4 * bl)   // the base model's loss = step 1's (before any update)
        XCTAssertLessThan(el, bl)

        // Stop at step 2, then resume to step 4.
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
}
