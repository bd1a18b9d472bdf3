import Foundation
import XCTest

/// `causal bench --memory`: the bandwidth rows and the decode floor of the default model, and bad arguments.
final class BenchMemoryCLITests: XCTestCase {
    func causal(_ args: [String]) throws -> CLITests.Output { try runCausal(args) }

    override func setUpWithError() throws {
        if !FileManager.default.fileExists(atPath: CLITests.modelPath) {
            let r = try causal(["info"])   // fetches the default model
            XCTAssertEqual(r.status, 0, r.stderr)
        }
    }

    func testMemoryJSON() throws {
        let r = try causal(["bench", "--memory", "--memory-mib", "16", "--memory-repeats", "2", "-t", "2", "--model", CLITests.modelPath, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let rows = try r.stdout.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        // 4 KiB pages on 1 and 2 threads, 2 MiB pages on 1 and 2 threads, then the floor for each page size at 2 threads.
        XCTAssertEqual(rows.count, 6, r.stdout)
        let bandwidth = rows.prefix(4)
        XCTAssertEqual(bandwidth.map { $0["threads"] as? Int }, [1, 2, 1, 2])
        XCTAssertEqual(bandwidth.map { $0["huge_pages"] as? Bool }, [false, false, true, true])
        for row in bandwidth {
            XCTAssertEqual((row["samples"] as? [Double])?.count, 2)
            XCTAssertGreaterThan(row["gb_per_second"] as! Double, 0)
        }
        // SmolLM2-135M Q4_1: 92.1 MiB of tensors, the Q8_0 embedding is also the head, so all of it is read.
        // Each floor uses the best 2-thread bandwidth of its page size: rows 1 (4 KiB) and 3 (2 MiB).
        for (floor, bw) in zip(rows.suffix(2), [rows[1], rows[3]]) {
            XCTAssertEqual(floor["test"] as? String, "decode floor")
            XCTAssertEqual(floor["huge_pages"] as? Bool, bw["huge_pages"] as? Bool)
            XCTAssertEqual(floor["gb_per_second"] as? Double, bw["gb_per_second"] as? Double)
            XCTAssertEqual(floor["bytes_per_token"] as? Int, 96_576_768)
            XCTAssertEqual(floor["file_tensor_bytes"] as? Int, 96_576_768)
            XCTAssertEqual(floor["tied_head"] as? Bool, true)
            let gbps = floor["gb_per_second"] as! Double, tps = floor["tokens_per_second"] as! Double
            // Both are printed rounded (GB/s to 0.01, tok/s to 0.1).
            XCTAssertEqual(tps, gbps * 1e9 / 96_576_768, accuracy: 0.06 + 0.0005 * tps)
        }
    }

    func testBadMemoryArguments() throws {
        let r = try causal(["bench", "--memory", "--memory-mib", "0"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--memory-mib"), r.stderr)
    }
}
