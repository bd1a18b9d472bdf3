import Foundation
import XCTest

/// `causal analyze attention`: the files it writes, its table, and its errors.
final class AnalyzeCLITests: XCTestCase {
    override func setUpWithError() throws {
        if !FileManager.default.fileExists(atPath: CLITests.modelPath) {
            let r = try runCausal(["info"])   // fetches the default model
            XCTAssertEqual(r.status, 0, r.stderr)
        }
    }

    func tempDir() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("analyze-cli-\(UUID().uuidString)").path
    }

    func testAttentionOnTheDefaultModelAndMiniLM() throws {
        let out = tempDir()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try runCausal(["analyze", "attention", "--model", CLITests.modelPath, "--text", "Attention is all you need.",
                               "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/attention.json"))) as? [String: Any])
        XCTAssertEqual(obj["architecture"] as? String, "llama")
        XCTAssertEqual(obj["attention"] as? String, "causal")
        let T = try XCTUnwrap(obj["size"] as? Int)
        XCTAssertEqual((obj["tokens"] as? [String])?.count, T)
        let heads = try XCTUnwrap(obj["heads"] as? [[String: Any]])
        XCTAssertEqual(heads.count, 30 * 9)
        for h in heads {
            let rank = try XCTUnwrap(h["rank"] as? Int), rank64 = try XCTUnwrap(h["rank_float64"] as? Int)
            XCTAssertTrue(rank >= 1 && rank <= rank64 && rank64 <= T, "ranks \(rank), \(rank64) of \(T)")
            XCTAssertEqual(h["mask"] as? String, "causal")
            XCTAssertEqual((h["singular_values"] as? [Double])?.count, T)
            XCTAssertNil(h["matrix"], "matrices only with --matrices")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: out)
        XCTAssertEqual(files.filter { $0.hasSuffix(".svg") }.count, 270)
        XCTAssertTrue(files.contains("L29H8.svg"))
        XCTAssertEqual(files.count, 271, "no temporary files left")
        XCTAssertTrue(r.stdout.contains("layer  rank min/mean/max"), r.stdout)
        XCTAssertEqual(r.stdout.components(separatedBy: "\n").filter { $0.hasPrefix("   29  ") }.count, 1, r.stdout)

        let out2 = tempDir()
        defer { try? FileManager.default.removeItem(atPath: out2) }
        let m = try runCausal(["analyze", "attention", "--model", "all-MiniLM-L6-v2", "--text", "Attention is all you need.",
                               "--out", out2, "--attention", "mixed", "--matrices", "--threshold", "0.01"])
        XCTAssertEqual(m.status, 0, m.stderr)
        let o2 = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out2 + "/attention.json"))) as? [String: Any])
        XCTAssertEqual(o2["attention"] as? String, "mixed")
        XCTAssertEqual((o2["threshold"] as? [String: Any])?["value"] as? Double, 0.01)
        let h2 = try XCTUnwrap(o2["heads"] as? [[String: Any]])
        XCTAssertEqual(h2.count, 6 * 12)
        let first = try XCTUnwrap(h2.first?["matrix"] as? [[Double]])
        XCTAssertEqual(first.count, o2["size"] as? Int)
        XCTAssertEqual(first[0][1], 0, "head 0 reads forward: no key after the query")
        XCTAssertEqual(h2.first?["mask"] as? String, "forward")
        XCTAssertEqual(h2.last?["mask"] as? String, "backward")
    }

    func testErrorsAreNamed() throws {
        let empty = try runCausal(["analyze", "attention", "--text", ""])
        XCTAssertNotEqual(empty.status, 0)
        XCTAssertTrue(empty.stderr.contains("--text is empty"), empty.stderr)
        let missing = try runCausal(["analyze", "attention", "--model", "/nonexistent/m.gguf", "--text", "hi", "--out", tempDir()])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("/nonexistent/m.gguf"), missing.stderr)
        let long = try runCausal(["analyze", "attention", "--model", "all-MiniLM-L6-v2", "--text",
                                  String(repeating: "word ", count: 600), "--out", tempDir()])
        XCTAssertEqual(long.status, 1)
        XCTAssertTrue(long.stderr.contains("602 tokens") && long.stderr.contains("512"), long.stderr)
        let badThreshold = try runCausal(["analyze", "attention", "--text", "hi", "--threshold=-1"])
        XCTAssertNotEqual(badThreshold.status, 0)
        XCTAssertTrue(badThreshold.stderr.contains("--threshold"), badThreshold.stderr)
    }
}
