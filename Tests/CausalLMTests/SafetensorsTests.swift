import Foundation
import XCTest
import CausalKernels
import CausalLM

/// Builds safetensors files byte by byte, including deliberately broken ones.
enum SafetensorsBuilder {
    struct Tensor {
        var name: String
        var dtype: String
        var shape: [Int]
        var data: [UInt8]
        /// Overrides the computed [begin, end) offsets in the header.
        var offsets: (Int, Int)? = nil
    }

    static func f32(_ name: String, _ shape: [Int], _ values: [Float]) -> Tensor {
        Tensor(name: name, dtype: "F32", shape: shape, data: values.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } })
    }

    static func header(_ tensors: [Tensor], metadata: [String: String]? = nil) -> String {
        var parts: [String] = []
        if let metadata {
            parts.append(#""__metadata__":{"# + metadata.map { #""\#($0.key)":"\#($0.value)""# }.joined(separator: ",") + "}")
        }
        var offset = 0
        for t in tensors {
            let (b, e) = t.offsets ?? (offset, offset + t.data.count)
            offset += t.data.count
            parts.append(#""\#(t.name)":{"dtype":"\#(t.dtype)","shape":[\#(t.shape.map(String.init).joined(separator: ","))],"data_offsets":[\#(b),\#(e)]}"#)
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    /// The file: u64 header length, header (space-padded to a multiple of 8 when `align`), data in order.
    static func file(_ tensors: [Tensor], header h: String? = nil, align: Bool = true, metadata: [String: String]? = nil) -> [UInt8] {
        var hb = Array((h ?? header(tensors, metadata: metadata)).utf8)
        if align { while hb.count % 8 != 0 { hb.append(0x20) } }
        var out = withUnsafeBytes(of: UInt64(hb.count).littleEndian) { Array($0) }
        out += hb
        for t in tensors { out += t.data }
        return out
    }

    static func write(_ bytes: [UInt8], to url: URL) throws { try Data(bytes).write(to: url) }
}

final class SafetensorsTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-st-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// Writes `bytes` to a file in the temp dir and returns the error opening it gives.
    func openError(_ bytes: [UInt8], _ name: String = "model.safetensors") throws -> CausalError {
        let url = dir.appendingPathComponent(name)
        try SafetensorsBuilder.write(bytes, to: url)
        do {
            _ = try SafetensorsFile(path: url.path)
        } catch let e as CausalError {
            XCTAssertTrue(e.description.contains(url.path), "error does not name the file: \(e)")
            return e
        }
        XCTFail("opening \(name) succeeded")
        return .invalidArgument("none")
    }

    func assertTensorError(_ e: CausalError, _ tensor: String, _ words: String, file: StaticString = #filePath, line: UInt = #line) {
        guard case let .badTensor(_, t, reason) = e else { return XCTFail("expected a tensor error, got \(e)", file: file, line: line) }
        XCTAssertEqual(t, tensor, file: file, line: line)
        XCTAssertTrue(reason.contains(words), "'\(reason)' does not say '\(words)'", file: file, line: line)
    }

    func testReadsTinyBertFixture() throws {
        let f = try SafetensorsFile(path: Fixtures.url("tiny/bert/model.safetensors").path)
        XCTAssertEqual(f.metadata, ["format": "pt"])
        XCTAssertEqual(f.tensors.count, 39)  // 5 embedding, 2 × 16 layer, 2 pooler tensors
        let w = try f.tensor("embeddings.word_embeddings.weight")
        XCTAssertEqual(w.dtype, .f32)
        XCTAssertEqual(w.shape, [1000, 64])
        XCTAssertEqual(w.byteCount, 1000 * 64 * 4)
        XCTAssertEqual(try f.tensor("encoder.layer.1.intermediate.dense.weight").shape, [128, 64])
        // Tensors are listed in data order, back to back.
        for (a, b) in zip(f.tensors, f.tensors.dropFirst()) { XCTAssertEqual(a.fileOffset + a.byteCount, b.fileOffset) }
    }

    func testFloatTypesAndMetadata() throws {
        let values: [Float] = [1, -2.5, 0.15625, 65504, -0.0, 3.0e-5]
        let f16 = values.flatMap { v -> [UInt8] in let h = ck_float_to_half(v); return [UInt8(h & 0xff), UInt8(h >> 8)] }
        let bf16 = values.flatMap { v -> [UInt8] in let h = ck_float_to_bf16(v); return [UInt8(h & 0xff), UInt8(h >> 8)] }
        let tensors = [
            SafetensorsBuilder.f32("a", [2, 3], values),
            SafetensorsBuilder.Tensor(name: "h", dtype: "F16", shape: [6], data: f16),
            SafetensorsBuilder.Tensor(name: "b", dtype: "BF16", shape: [3, 2], data: bf16),
            SafetensorsBuilder.Tensor(name: "ids", dtype: "I64", shape: [1, 2], data: [UInt8](repeating: 0, count: 16)),
            SafetensorsBuilder.Tensor(name: "empty", dtype: "F32", shape: [0, 4], data: []),
        ]
        let url = dir.appendingPathComponent("m.safetensors")
        try SafetensorsBuilder.write(SafetensorsBuilder.file(tensors, metadata: ["format": "pt", "note": "x"]), to: url)
        let ck = try SafetensorsCheckpoint(path: url.path)
        XCTAssertEqual(ck.files[0].metadata, ["format": "pt", "note": "x"])
        XCTAssertEqual(ck.tensorNames, ["a", "b", "empty", "h", "ids"])
        let a = try ck.matrix("a", rows: 2, cols: 3)
        XCTAssertEqual(a.dtype, .f32)
        var row = [Float](repeating: 0, count: 3)
        dequantize(a, row: 1, into: &row)
        XCTAssertEqual(row, Array(values[3...]))
        XCTAssertEqual(try ck.vector("h", count: 6), values.map { ck_half_to_float(ck_float_to_half($0)) })
        let b = try ck.matrix("b", rows: 3, cols: 2)
        XCTAssertEqual(b.dtype, .bf16)
        var all = [Float](repeating: 0, count: 6)
        dequantizeAll(b, into: &all)
        XCTAssertEqual(all, values.map { ck_bf16_to_float(ck_float_to_bf16($0)) })
        XCTAssertEqual(try ck.matrix("empty", rows: 0, cols: 4).rows, 0)
        XCTAssertThrowsError(try ck.vector("empty", count: 0), "shape [0, 4] is not [0]")
    }

    func testUnalignedDataIsCopied() throws {
        // An unpadded 3-byte-longer header leaves the F32 data at an odd address in the map.
        let t = SafetensorsBuilder.f32("w", [2, 2], [1, 2, 3, 4])
        var h = SafetensorsBuilder.header([t])
        while (8 + h.utf8.count) % 4 != 1 { h += " " }
        let url = dir.appendingPathComponent("u.safetensors")
        try SafetensorsBuilder.write(SafetensorsBuilder.file([t], header: h, align: false), to: url)
        let ck = try SafetensorsCheckpoint(path: url.path)
        let f = ck.files[0]
        XCTAssertNotEqual(Int(bitPattern: f.data(try f.tensor("w"))) % 4, 0, "the test needs unaligned data")
        let m = try ck.matrix("w", rows: 2, cols: 2)
        XCTAssertEqual(Int(bitPattern: m.data) % 4, 0)
        var all = [Float](repeating: 0, count: 4)
        dequantizeAll(m, into: &all)
        XCTAssertEqual(all, [1, 2, 3, 4])
        XCTAssertThrowsError(try ck.vector("w", count: 4), "shape [2, 2] is not [4]")
    }

    func testTruncatedFile() throws {
        let good = SafetensorsBuilder.file([SafetensorsBuilder.f32("first", [4], [1, 2, 3, 4]),
                                            SafetensorsBuilder.f32("last.weight", [8, 8], [Float](repeating: 1, count: 64))])
        // Cut inside the last tensor's data.
        assertTensorError(try openError(Array(good.dropLast(10))), "last.weight", "past the end")
        // Cut inside the header.
        guard case let .badFormat(_, field, reason) = try openError(Array(good.prefix(30))) else { return XCTFail() }
        XCTAssertEqual(field, "header length")
        XCTAssertTrue(reason.contains("past the end"), reason)
        // Shorter than the length field.
        guard case let .badFormat(_, field2, _) = try openError([1, 2, 3]) else { return XCTFail() }
        XCTAssertEqual(field2, "header length")
    }

    func testHeaderLengthLimitAndJSON() throws {
        var huge = withUnsafeBytes(of: UInt64(1 << 40).littleEndian) { Array($0) }
        huge += Array("{}".utf8)
        guard case let .badFormat(_, f, r) = try openError(huge) else { return XCTFail() }
        XCTAssertEqual(f, "header length")
        XCTAssertTrue(r.contains("limit"), r)

        let t = SafetensorsBuilder.f32("x", [1], [1])
        guard case let .badFormat(_, f2, r2) = try openError(SafetensorsBuilder.file([t], header: #"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]"#)) else { return XCTFail() }
        XCTAssertEqual(f2, "header")
        XCTAssertTrue(r2.contains("invalid JSON"), r2)

        let dup = #"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        guard case let .badFormat(_, _, r3) = try openError(SafetensorsBuilder.file([t], header: dup)) else { return XCTFail() }
        XCTAssertTrue(r3.contains("duplicate key \"x\""), r3)

        guard case let .badFormat(_, _, r4) = try openError(SafetensorsBuilder.file([t], header: "[1, 2]")) else { return XCTFail() }
        XCTAssertTrue(r4.contains("'{'"), r4)
    }

    func testOffsetsPastTheEnd() throws {
        var t = SafetensorsBuilder.f32("encoder.layer.0.attention.self.query.weight", [2, 2], [1, 2, 3, 4])
        t.offsets = (1000, 1016)
        assertTensorError(try openError(SafetensorsBuilder.file([t])), t.name, "past the end")
    }

    func testDTypeShapeMismatch() throws {
        // 16 bytes of data for a [2, 3] F32 tensor (24 bytes).
        var t = SafetensorsBuilder.f32("pooler.dense.weight", [2, 3], [1, 2, 3, 4])
        t.shape = [2, 3]
        assertTensorError(try openError(SafetensorsBuilder.file([t])), "pooler.dense.weight", "needs 24")
        // The same bytes called F16: 16 bytes for 6 halves (12 bytes).
        var h = SafetensorsBuilder.f32("h", [2, 3], [1, 2, 3, 4])
        h.dtype = "F16"
        assertTensorError(try openError(SafetensorsBuilder.file([h])), "h", "needs 12")
        // Unknown dtype.
        var q = SafetensorsBuilder.f32("q", [4], [1, 2, 3, 4])
        q.dtype = "Q4_0"
        assertTensorError(try openError(SafetensorsBuilder.file([q])), "q", "unknown dtype 'Q4_0'")
        // Bad shape values.
        var neg = SafetensorsBuilder.f32("neg", [4], [1, 2, 3, 4])
        neg.shape = [-4]
        assertTensorError(try openError(SafetensorsBuilder.file([neg])), "neg", "non-negative")
        var big = SafetensorsBuilder.f32("big", [4], [1, 2, 3, 4])
        big.shape = [Int.max / 2, 4]
        assertTensorError(try openError(SafetensorsBuilder.file([big])), "big", "overflows")
    }

    func testOverlappingTensors() throws {
        let a = SafetensorsBuilder.f32("a", [4], [1, 2, 3, 4])
        var b = SafetensorsBuilder.f32("b", [4], [5, 6, 7, 8])
        b.offsets = (8, 24)
        let e = try openError(SafetensorsBuilder.file([a, b]))
        assertTensorError(e, "b", "overlap")
        XCTAssertTrue(e.description.contains("'a'"), e.description)
    }

    func testWeightAccessErrors() throws {
        let url = dir.appendingPathComponent("w.safetensors")
        try SafetensorsBuilder.write(SafetensorsBuilder.file([
            SafetensorsBuilder.f32("w", [2, 3], [1, 2, 3, 4, 5, 6]),
            SafetensorsBuilder.Tensor(name: "position_ids", dtype: "I64", shape: [2], data: [UInt8](repeating: 0, count: 16)),
        ]), to: url)
        let ck = try SafetensorsCheckpoint(path: url.path)
        func err(_ body: () throws -> Void) -> CausalError? {
            do { try body() } catch let e as CausalError { return e } catch { XCTFail("\(error)") }
            XCTFail("no error")
            return nil
        }
        let missing = err { _ = try ck.matrix("encoder.layer.3.output.dense.weight", rows: 2, cols: 3) }
        XCTAssertEqual(missing, .badTensor(path: url.path, tensor: "encoder.layer.3.output.dense.weight", reason: "missing from the checkpoint"))
        let shape = err { _ = try ck.matrix("w", rows: 3, cols: 2) }
        XCTAssertTrue(shape?.description.contains("shape [2, 3] does not match the expected [3, 2]") ?? false, "\(String(describing: shape))")
        XCTAssertTrue(shape?.description.contains(url.path) ?? false)
        let dtype = err { _ = try ck.vector("position_ids", count: 2) }
        XCTAssertTrue(dtype?.description.contains("dtype I64 is not supported") ?? false, "\(String(describing: dtype))")
    }

    func testShardedCheckpoint() throws {
        try SafetensorsBuilder.write(SafetensorsBuilder.file([SafetensorsBuilder.f32("a", [2], [1, 2])]),
                                     to: dir.appendingPathComponent("model-00001-of-00002.safetensors"))
        try SafetensorsBuilder.write(SafetensorsBuilder.file([SafetensorsBuilder.f32("b", [3], [3, 4, 5]),
                                                              SafetensorsBuilder.f32("unlisted", [1], [9])]),
                                     to: dir.appendingPathComponent("model-00002-of-00002.safetensors"))
        let index = dir.appendingPathComponent("model.safetensors.index.json")
        try #"{"metadata": {"total_size": 20}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#
            .write(to: index, atomically: true, encoding: .utf8)
        let ck = try SafetensorsCheckpoint(path: dir.path)
        XCTAssertEqual(ck.files.count, 2)
        XCTAssertEqual(ck.tensorNames, ["a", "b"])
        XCTAssertEqual(try ck.vector("a", count: 2), [1, 2])
        XCTAssertEqual(try ck.vector("b", count: 3), [3, 4, 5])

        // The index names a shard that lacks the tensor.
        try #"{"weight_map": {"a": "model-00002-of-00002.safetensors"}}"#.write(to: index, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SafetensorsCheckpoint(path: index.path)) { e in
            XCTAssertEqual((e as? CausalError).map { if case let .badTensor(p, t, _) = $0 { return p.hasSuffix("model-00002-of-00002.safetensors") && t == "a" }; return false }, true, "\(e)")
        }
        // Shards must be plain file names beside the index.
        try #"{"weight_map": {"a": "../elsewhere.safetensors"}}"#.write(to: index, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SafetensorsCheckpoint(path: index.path)) { e in
            XCTAssertTrue("\(e)".contains("weight_map.a"), "\(e)")
        }
        // A missing shard file.
        try #"{"weight_map": {"a": "model-00009-of-00009.safetensors"}}"#.write(to: index, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SafetensorsCheckpoint(path: index.path)) { e in
            XCTAssertTrue("\(e)".contains("model-00009-of-00009.safetensors: no such file"), "\(e)")
        }
    }
}

final class HFJSONTests: XCTestCase {
    func parse(_ s: String, rejectDuplicates: Bool = false) throws -> HFJSON {
        try HFJSON.parse(Data(s.utf8), rejectDuplicateKeys: rejectDuplicates)
    }

    func testValues() throws {
        let v = try parse(#" {"i": 384, "neg": -7, "d": 1e-12, "f": 0.5, "big": 123456789012345678901234, "s": "a\"\\\/\n\u00e9\ud83d\ude00", "b": [true, false, null], "o": {}} "#)
        XCTAssertEqual(v["i"], .int(384))
        XCTAssertEqual(v["neg"], .int(-7))
        XCTAssertEqual(v["d"], .double(1e-12))
        XCTAssertEqual(v["f"], .double(0.5))
        XCTAssertEqual(v["big"]?.typeName, "number")
        XCTAssertEqual(v["s"], .string("a\"\\/\né😀"))
        XCTAssertEqual(v["b"], .array([.bool(true), .bool(false), .null]))
        XCTAssertEqual(v["o"], .object(HFJSONObject()))
        XCTAssertEqual(v.objectValue?.keys, ["i", "neg", "d", "f", "big", "s", "b", "o"])
    }

    func testKeepsCanonicallyEquivalentKeysApart() throws {
        // "é" precomposed and decomposed are different vocabulary entries.
        let text = "{\"\u{e9}\": 1, \"e\u{301}\": 2}"
        let v = try parse(text)
        XCTAssertEqual(v.objectValue?.count, 2)
        XCTAssertEqual(v.objectValue.map { Array($0.values) }, [.int(1), .int(2)])
        XCTAssertEqual(v.objectValue.map { $0.keys.map { Array($0.utf8) } }, [[0xC3, 0xA9], [0x65, 0xCC, 0x81]])
        // Where names must be unique (the safetensors header), canonically equal names count as duplicates.
        XCTAssertThrowsError(try parse(text, rejectDuplicates: true))
    }

    func testSyntaxErrors() {
        for (text, offset) in [("{\"a\": 1,}", 8), ("[1 2]", 3), ("\"abc", 0), ("01", 0), ("{\"a\" 1}", 5), ("tru", 0),
                               ("[1] x", 4), ("\"\\ud800\"", 7), ("\"a\u{1}\"", 2), ("", 0)] {
            XCTAssertThrowsError(try parse(text), text) { e in
                XCTAssertEqual((e as? HFJSON.SyntaxError)?.offset, offset, "\(text): \(e)")
            }
        }
        XCTAssertThrowsError(try HFJSON.parse(Data([0x22, 0xff, 0x22]))) { e in
            XCTAssertTrue("\(e)".contains("UTF-8"), "\(e)")
        }
        XCTAssertThrowsError(try parse(String(repeating: "[", count: 600) + String(repeating: "]", count: 600)))
    }
}
