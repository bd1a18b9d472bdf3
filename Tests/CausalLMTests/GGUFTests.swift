import Foundation
import XCTest
import CausalLM

final class GGUFTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-gguf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// A small valid file: two metadata keys, one F32 tensor of 4×2.
    func validWriter() -> GGUFWriter {
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("llama")), ("test.count", .u32(7)),
                      ("test.list", .strings(["a", "bc", "déf"]))]
        w.tensors = [GGUFWriter.Tensor(name: "t.weight", dims: [4, 2], floats: [1, 2, 3, 4, 5, 6, 7, 8])]
        return w
    }

    func write(_ bytes: [UInt8], _ name: String = "f.gguf") throws -> String {
        let p = dir.appendingPathComponent(name).path
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    /// Asserts that opening `bytes` throws a CausalError whose message contains every fragment.
    func assertRejects(_ bytes: [UInt8], _ fragments: String..., file: StaticString = #filePath, line: UInt = #line) throws {
        let p = try write(bytes)
        do {
            _ = try GGUFFile(path: p)
            XCTFail("expected an error", file: file, line: line)
        } catch let e as CausalError {
            let msg = e.description
            for f in fragments { XCTAssertTrue(msg.contains(f), "'\(msg)' lacks '\(f)'", file: file, line: line) }
            XCTAssertTrue(msg.contains(p), "error should name the file: \(msg)", file: file, line: line)
        }
    }

    func testReadsValidFile() throws {
        let g = try GGUFFile(path: write(validWriter().serialize()))
        XCTAssertEqual(g.version, 3)
        XCTAssertEqual(try g.string("general.architecture"), "llama")
        XCTAssertEqual(try g.int("test.count"), 7)
        XCTAssertEqual(try g.stringArray("test.list"), ["a", "bc", "déf"])
        let t = try g.tensor("t.weight")
        XCTAssertEqual(t.dims, [4, 2])
        XCTAssertEqual(t.type.name, "F32")
        let p = g.data(t).assumingMemoryBound(to: Float.self)
        XCTAssertEqual((0..<8).map { p[$0] }, [1, 2, 3, 4, 5, 6, 7, 8])
        XCTAssertThrowsError(try g.string("test.count")) { e in
            XCTAssertTrue("\(e)".contains("test.count") && "\(e)".contains("expected string"), "\(e)")
        }
        XCTAssertThrowsError(try g.int("missing.key")) { e in XCTAssertTrue("\(e)".contains("missing.key"), "\(e)") }
    }

    func testBadMagic() throws {
        var b = validWriter().serialize()
        b[0] = UInt8(ascii: "X")
        try assertRejects(b, "magic", "not a GGUF file")
    }

    func testUnsupportedVersion() throws {
        var b = validWriter().serialize()
        b[4] = 9
        try assertRejects(b, "version", "9")
    }

    func testTruncatedHeader() throws {
        let b = validWriter().serialize()
        for cut in [3, 10, 30, 60, 100] {
            let path = try write(Array(b[0..<cut]))
            XCTAssertThrowsError(try GGUFFile(path: path)) { e in
                let m = "\(e)"
                XCTAssertTrue(m.contains(path) && (m.contains("truncated") || m.contains("cannot fit")), "cut at \(cut): \(m)")
            }
        }
    }

    func testTruncatedTensorData() throws {
        let b = validWriter().serialize()
        try assertRejects(Array(b[0..<(b.count - 8)]), "t.weight", "past the end")
    }

    func testHugeCounts() throws {
        var b = validWriter().serialize()
        for i in 8..<16 { b[i] = 0xff }   // tensor_count
        try assertRejects(b, "tensor_count", "cannot fit")
        var c = validWriter().serialize()
        for i in 16..<24 { c[i] = 0x7f }  // kv_count
        try assertRejects(c, "kv_count", "cannot fit")
    }

    func testHugeStringLength() throws {
        var b = validWriter().serialize()
        for i in 24..<32 { b[i] = 0x7f }  // length of the first key
        try assertRejects(b, "string length", "past the end")
    }

    func testOffsetPastEnd() throws {
        var w = validWriter()
        w.tensors.append(GGUFWriter.Tensor(name: "late.weight", dims: [8], floats: Array(repeating: 1, count: 8)))
        var b = w.serialize()
        // The second tensor's offset field: find "late.weight" and skip name, n_dims, dims, type.
        let name = Array("late.weight".utf8)
        let at = (0..<(b.count - name.count)).first { Array(b[$0..<($0 + name.count)]) == name }!
        let offsetField = at + name.count + 4 + 8 + 4
        for i in 0..<8 { b[offsetField + i] = i == 3 ? 0x10 : 0 }   // 0x10000000 bytes in
        try assertRejects(b, "late.weight", "past the end")
    }

    func testUnknownTensorType() throws {
        var w = validWriter()
        w.tensors = [GGUFWriter.Tensor(name: "odd.weight", dims: [4], type: 77, bytes: [0, 0, 0, 0])]
        try assertRejects(w.serialize(), "odd.weight", "unknown tensor type 77")
    }

    func testDimsOverflow() throws {
        var w = validWriter()
        w.tensors = [GGUFWriter.Tensor(name: "big.weight", dims: [Int(Int32.max), Int(Int32.max), Int(Int32.max)], floats: [1])]
        try assertRejects(w.serialize(), "big.weight", "overflows")
    }

    func testMissingFileAndTextFile() throws {
        XCTAssertThrowsError(try GGUFFile(path: dir.appendingPathComponent("nope.gguf").path)) { e in
            XCTAssertTrue("\(e)".contains("no such file"), "\(e)")
        }
        let p = try write(Array("hello, this is text, not a model\n".utf8), "t.txt")
        XCTAssertThrowsError(try GGUFFile(path: p)) { e in XCTAssertTrue("\(e)".contains("not a GGUF file"), "\(e)") }
    }

    func testRealModelHeader() throws {
        let g = TestModel.gguf
        XCTAssertEqual(g.tensors.count, 272)
        XCTAssertEqual(try g.int("llama.block_count"), 30)
        XCTAssertEqual(try g.stringArray("tokenizer.ggml.tokens").count, 49152)
        XCTAssertEqual(try g.tensor("token_embd.weight").type.name, "Q8_0")
        XCTAssertEqual(try g.tensor("blk.0.ffn_down.weight").type.name, "Q4_1")
        XCTAssertEqual(try g.tensor("blk.0.ffn_down.weight").dims, [1536, 576])
    }
}
