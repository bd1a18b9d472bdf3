import Foundation
import XCTest

/// `causal train` and `causal eval` end to end on the default model: bad input, a short run whose loss falls,
/// `--resume` continuing with the identical loss curve, loss.svg, and `eval --json` agreeing with training's eval.
final class TrainCLITests: XCTestCase {
    var dir = ""

    /// Runs the built `causal` (as CLITests does), stdin closed.
    func causal(_ args: [String]) throws -> CLITests.Output {
        try runCausal(args)
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

    /// A checkpoint directory generates text with its base model's tokenizer and chat template (recorded in
    /// trainer_state.json). One step at lr 0 (the first warmup step) leaves the weights as the base model's, so the
    /// checkpoint's greedy answer must be the base model's (fp32 reference) answer.
    func testGenerateFromCheckpoint() throws {
        let data = try writeData("pairs.jsonl", pairLines())
        let ck = dir + "/ck"
        let t = try causal(["train", "--model", CLITests.modelPath, "--data", data, "--steps", "1", "--warmup", "1", "--threads", "2", "--out", ck])
        XCTAssertEqual(t.status, 0, t.stderr)
        let prompt = "What is the capital of France?"
        let g = try causal(["generate", "--model", ck, "--max-tokens", "12", "--json", "--threads", "2", prompt])
        XCTAssertEqual(g.status, 0, g.stderr)
        let b = try causal(["generate", "--model", CLITests.modelPath, "--precision", "reference", "--max-tokens", "12", "--json", "--threads", "2", prompt])
        XCTAssertEqual(b.status, 0, b.stderr)
        let gj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(g.stdout.utf8)) as? [String: Any])
        let bj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(b.stdout.utf8)) as? [String: Any])
        print("checkpoint: \(gj["text"] ?? "-")")
        XCTAssertEqual(gj["tokens"] as? [Int], bj["tokens"] as? [Int])
        XCTAssertEqual(gj["prompt_tokens"] as? Int, bj["prompt_tokens"] as? Int)
        XCTAssertEqual(gj["text"] as? String, bj["text"] as? String)
        XCTAssertTrue((gj["text"] as? String ?? "").contains("Paris"), g.stdout)
        // A checkpoint whose recorded base model is gone says so.
        let moved = dir + "/moved"
        try FileManager.default.createDirectory(atPath: moved, withIntermediateDirectories: true)
        for f in ["model.safetensors", "config.json"] { try FileManager.default.copyItem(atPath: ck + "/" + f, toPath: moved + "/" + f) }
        try #"{"step": 1, "total_steps": 1, "seed": "0", "base_model": "/nonexistent/base.gguf"}"#.write(toFile: moved + "/trainer_state.json", atomically: true, encoding: .utf8)
        let m = try causal(["generate", "--model", moved, "--max-tokens", "4", prompt])
        XCTAssertNotEqual(m.status, 0)
        XCTAssertTrue(m.stderr.contains("trainer_state.json") && m.stderr.contains("/nonexistent/base.gguf"), m.stderr)
    }

    /// `--init random --config`: a new model of the config's shape with the default model's tokenizer; the same
    /// seed gives the same checkpoint byte for byte, another seed another; the first loss is that of a uniform
    /// guess over the vocabulary (ln 49152, nearly: the initial logits are small).
    func testFromScratchIsSeeded() throws {
        let data = try writeData("pairs.jsonl", pairLines())
        let cfg = try writeData("tiny.json", [#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": true}"#])
        func run(_ seed: Int, _ out: String) throws -> [Int: Double] {
            let r = try causal(["train", "--model", CLITests.modelPath, "--init", "random", "--config", cfg, "--attention", "mixed",
                                "--data", data, "--steps", "2", "--lr", "1e-3", "--seed", String(seed), "--threads", "2", "--out", out])
            XCTAssertEqual(r.status, 0, r.stderr)
            return trainLosses(try metrics(out))
        }
        let (a, b, c) = (dir + "/a", dir + "/b", dir + "/c")
        let la = try run(3, a), lb = try run(3, b), lc = try run(4, c)
        XCTAssertEqual(la, lb)
        XCTAssertNotEqual(la[1], lc[1])
        XCTAssertEqual(la[1]!, log(49152.0), accuracy: 0.05)
        let fa = try Data(contentsOf: URL(fileURLWithPath: a + "/model.safetensors"))
        XCTAssertEqual(fa, try Data(contentsOf: URL(fileURLWithPath: b + "/model.safetensors")))
        XCTAssertNotEqual(fa, try Data(contentsOf: URL(fileURLWithPath: c + "/model.safetensors")))
        let config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: a + "/config.json"))) as? [String: Any])
        XCTAssertEqual(config["vocab_size"] as? Int, 49152)
        XCTAssertEqual(config["hidden_size"] as? Int, 32)
        XCTAssertEqual(config["num_key_value_heads"] as? Int, 2)
        XCTAssertEqual(config["tie_word_embeddings"] as? Bool, true)
        let state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: a + "/trainer_state.json"))) as? [String: Any])
        XCTAssertEqual(state["init"] as? String, "random")
        XCTAssertEqual(state["attention"] as? String, "mixed")
        // eval of the checkpoint with the mask it was trained with.
        let e = try causal(["eval", "--model", a, "--data", data, "--attention", "mixed", "--json", "--threads", "2"])
        XCTAssertEqual(e.status, 0, e.stderr)
    }

    /// Masks that would let a token see its target are refused before any work; so are bad from-scratch options.
    func testRefusedOptions() throws {
        let data = try writeData("pairs.jsonl", pairLines())
        let badVocab = try writeData("bad.json", [#"{"vocab_size": 7, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}"#])
        let cases: [([String], [String])] = [
            (["--attention", "bidirectional"], ["bidirectional", "predict"]),
            (["--attention", "mixed", "--train-on-prompt"], ["--train-on-prompt", "mixed"]),
            (["--attention", "prefix", "--train-on-prompt"], ["--train-on-prompt", "prefix"]),
            (["--init", "random"], ["--config"]),
            (["--config", badVocab], ["--init random"]),
            (["--init", "random", "--config", badVocab], ["vocab_size", "bad.json", "49152"]),
            (["--init", "random", "--config", dir + "/none.json"], ["none.json"]),
        ]
        for (i, (args, words)) in cases.enumerated() {
            let out = dir + "/r\(i)"
            let r = try causal(["train", "--model", CLITests.modelPath, "--data", data, "--steps", "1", "--out", out] + args)
            XCTAssertNotEqual(r.status, 0, "\(args)")
            for w in words {
                XCTAssertTrue(r.stderr.contains(w), "\(args): \(w) in \(r.stderr)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/model.safetensors"), "\(args)")
        }
        let e = try causal(["eval", "--model", CLITests.modelPath, "--data", data, "--attention", "bidirectional"])
        XCTAssertNotEqual(e.status, 0)
        XCTAssertTrue(e.stderr.contains("bidirectional"), e.stderr)
    }
}

extension TrainCLITests {
    /// QLoRA on the default model (Q4_1 base left quantized) with dropout: the loss falls, the run writes a PEFT
    /// adapter, `causal eval` on the run directory gives training's eval loss, and a run stopped at step 2 and
    /// resumed gives the identical losses for steps 3 and 4 (dropout masks follow the step).
    func testLoRARunResumeIsIdenticalAndEvalAgrees() throws {
        let data = try writeData("pairs.jsonl", pairLines())
        let common = ["train", "--model", CLITests.modelPath, "--data", data, "--lr", "2e-3", "--warmup", "1", "--threads", "2",
                      "--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--seed", "3"]
        let full = dir + "/lora-full"
        let r = try causal(common + ["--steps", "4", "--eval-data", data, "--out", full])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("LoRA rank 4"), r.stderr)
        XCTAssertTrue(r.stderr.contains("peak RSS"), r.stderr)
        for f in ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json", "metrics.jsonl", "loss.svg"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: full + "/" + f), f)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: full + "/model.safetensors"), "LoRA writes no full model")
        let m = try metrics(full)
        let losses = trainLosses(m)
        XCTAssertEqual(losses.keys.sorted(), [1, 2, 3, 4])
        XCTAssertLessThan(losses[4]!, losses[2]!)
        let evalLoss = try XCTUnwrap(m.last { $0["eval_loss"] != nil }?["eval_loss"] as? Double)
        let e = try causal(["eval", "--model", full, "--data", data, "--json", "--threads", "2"])
        XCTAssertEqual(e.status, 0, e.stderr)
        let el = try XCTUnwrap((JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as? [String: Any])?["loss"] as? Double)
        XCTAssertEqual(el, evalLoss, accuracy: 1e-9 * evalLoss)
        let b = try causal(["eval", "--model", CLITests.modelPath, "--data", data, "--json", "--threads", "2"])
        let bl = try XCTUnwrap((JSONSerialization.jsonObject(with: Data(b.stdout.utf8)) as? [String: Any])?["loss"] as? Double)
        XCTAssertLessThan(el, bl, "the adapter lowers the eval loss")

        let half = dir + "/lora-half", rest = dir + "/lora-rest"
        let h = try causal(common + ["--steps", "2", "--out", half])
        XCTAssertEqual(h.status, 0, h.stderr)
        let res = try causal(common + ["--steps", "4", "--resume", half, "--out", rest])
        XCTAssertEqual(res.status, 0, res.stderr)
        XCTAssertTrue(res.stderr.contains("resuming at step 2"), res.stderr)
        let first = trainLosses(try metrics(half)), second = trainLosses(try metrics(rest))
        XCTAssertEqual(first[1], losses[1]); XCTAssertEqual(first[2], losses[2])
        XCTAssertEqual(second[3], losses[3], "resumed step 3")
        XCTAssertEqual(second[4], losses[4], "resumed step 4")
        let bad = try causal(common + ["--steps", "1", "--lora-targets", "q,wrong", "--out", dir + "/bad"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("unknown module 'wrong'"), bad.stderr)
    }
}
