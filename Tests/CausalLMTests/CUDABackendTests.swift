import Foundation
import XCTest
import CausalLM
import CausalKernels

/// The CUDA backend (Backends/CUDA, docs/cuda.md). Without a GPU: opening it fails with the "no CUDA device" error,
/// never a crash; the kernel sources compile with NVRTC for compute_80 and compute_90 wherever NVRTC is installed
/// (the nvidia-cuda-nvrtc-cu12 wheel; .ci/run installs it into .venv-nvrtc and sets CAUSAL_NVRTC_LIB). With a GPU:
/// logits against the CPU and batch invariance, bit for bit.
final class CUDABackendTests: XCTestCase {
    /// Why CUDA cannot run here (nil when a device opened).
    static let unavailable: String? = ModelBundle.cudaUnavailableReason()

    // MARK: (a) without a device

    func testWithoutDriverTheErrorSaysNoCUDADevice() throws {
        // A driver path that does not exist comes first; the standard names follow it, so on a machine with a GPU the
        // backend still opens and there is nothing to assert.
        setenv("CAUSAL_CUDA_LIB", "/nonexistent/libcuda.so.1", 1)
        defer { unsetenv("CAUSAL_CUDA_LIB") }
        if (try? CUDARuntime.loadDriver()) != nil { throw XCTSkip("a CUDA driver is installed here; the no-driver error cannot be observed") }
        XCTAssertThrowsError(try CUDARuntime.loadDriver()) { error in
            let message = "\(error)"
            XCTAssertTrue(message.hasPrefix("no CUDA device: libcuda.so.1 not found (tried "), message)
            XCTAssertTrue(message.contains("/nonexistent/libcuda.so.1: no such file"), message)
            XCTAssertTrue(message.contains("libcuda.so.1"), message)
        }
        // Through the public API, on a real model: the same error, and the model still runs on the CPU afterwards.
        let path = try TinyModel.write(dtype: .q8_0)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let bundle = try ModelBundle(path: path, precision: .fast, threads: 1)
        let before = try bundle.model.forward([SequenceChunk(cache: bundle.model.makeCache(capacity: 8), tokens: [1, 2, 3])])[0]
        XCTAssertThrowsError(try bundle.use(.cuda)) { XCTAssertTrue("\($0)".hasPrefix("no CUDA device: "), "\($0)") }
        XCTAssertEqual((bundle.model as? DecoderModel)?.device, .cpu)
        let after = try bundle.model.forward([SequenceChunk(cache: bundle.model.makeCache(capacity: 8), tokens: [1, 2, 3])])[0]
        XCTAssertEqual(before.map(\.bitPattern), after.map(\.bitPattern))
        XCTAssertEqual(ModelBundle.cudaUnavailableReason()?.hasPrefix("no CUDA device: libcuda.so.1 not found"), true)
    }

    func testBF16RoundsToNearestEven() {
        XCTAssertEqual(CUDARuntime.bf16(1.0), 0x3F80)
        XCTAssertEqual(CUDARuntime.bf16(-2.0), 0xC000)
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        XCTAssertEqual(CUDARuntime.bf16(Float(bitPattern: 0x3F80_8000)), 0x3F80)
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        XCTAssertEqual(CUDARuntime.bf16(Float(bitPattern: 0x3F81_8000)), 0x3F82)
        XCTAssertEqual(CUDARuntime.bf16(Float(bitPattern: 0x3F80_8001)), 0x3F81)   // just above half: up
        XCTAssertEqual(CUDARuntime.bf16(.infinity), 0x7F80)
        XCTAssertTrue(Float(bitPattern: UInt32(CUDARuntime.bf16(.nan)) << 16).isNaN)
        // Every bf16 value converts back to itself.
        for h in stride(from: 0, through: 0xFFFF, by: 97) where !Float(bitPattern: UInt32(h) << 16).isNaN {
            XCTAssertEqual(CUDARuntime.bf16(Float(bitPattern: UInt32(h) << 16)), UInt16(h))
        }
    }

    // MARK: (b) NVRTC compile check of every kernel

    /// NVRTC, or a skip naming what was tried (a failure when CAUSAL_REQUIRE_NVRTC=1, as .ci/run sets it).
    static func nvrtc() throws -> (path: String, version: String, cubin: Bool) {
        do { return try CUDARuntime.nvrtc() } catch {
            if ProcessInfo.processInfo.environment["CAUSAL_REQUIRE_NVRTC"] == "1" { XCTFail("CAUSAL_REQUIRE_NVRTC=1: \(error)") }
            throw XCTSkip("\(error)")
        }
    }

    func testEveryKernelCompilesWithNVRTC() throws {
        let nvrtc = try Self.nvrtc()
        for arch in ["compute_80", "compute_90"] {
            let out: (code: [UInt8], isCUBIN: Bool, log: String)
            do {
                out = try CUDARuntime.compile(CUDARuntime.kernelSource, name: "causal_kernels.cu", architecture: arch)
            } catch {
                XCTFail("NVRTC \(nvrtc.version) (\(nvrtc.path)): \(error)")
                continue
            }
            XCTAssertFalse(out.isCUBIN)
            let ptx = String(decoding: out.code, as: UTF8.self)
            for name in CUDARuntime.kernelNames {
                XCTAssertTrue(ptx.contains(".entry \(name)("), "\(arch): no kernel \(name) in the PTX")
            }
            // No kernel is left out of the list the backend looks up.
            let entries = ptx.components(separatedBy: ".entry ").dropFirst().map { String($0.prefix { $0 != "(" }) }
            XCTAssertEqual(Set(entries), Set(CUDARuntime.kernelNames), arch)
            XCTAssertFalse(ptx.contains("atom."), "\(arch): a kernel uses atomics (reductions must run in a fixed order)")
        }
        // CUBIN for sm_90, as the backend builds it on an H100.
        if nvrtc.cubin {
            let out = try CUDARuntime.compile(CUDARuntime.kernelSource, name: "causal_kernels.cu", architecture: "sm_90")
            XCTAssertTrue(out.isCUBIN)
            XCTAssertEqual(Array(out.code.prefix(4)), [0x7F, 0x45, 0x4C, 0x46])   // an ELF image
        }
    }

    func testNVRTCReportsCompileErrorsWithTheLog() throws {
        _ = try Self.nvrtc()
        XCTAssertThrowsError(try CUDARuntime.compile("extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
                                               name: "broken.cu", architecture: "compute_90")) { error in
            let m = "\(error)"
            XCTAssertTrue(m.contains("compiling broken.cu for compute_90 failed"), m)
            XCTAssertTrue(m.contains("undefined_name"), m)   // NVRTC's log names the identifier
        }
    }

    // MARK: the checks themselves, on the CPU (the same code runs on a GPU in Benchmarks/cuda-check.sh)

    func testDeviceChecksPassOnTheCPU() throws {
        let path = try TinyModel.write(dtype: .q8_0)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let bundle = try ModelBundle(path: path, precision: .fast, threads: 2)
        let prompts = DeviceCheck.prompts(count: 12, vocabularySize: bundle.model.vocabularySize, maxLength: 20)
        XCTAssertEqual(prompts.count, 12)
        XCTAssertTrue(prompts.allSatisfy { $0.count >= 4 && $0.count <= 20 && $0.allSatisfy { $0 >= 1 && $0 < 97 } })
        let rows = try DeviceCheck.batchInvariance(bundle, prompts: prompts, tokens: 6, batchSizes: [4, 12], chunk: 3)
        XCTAssertEqual(rows.count, 5)
        for r in rows { XCTAssertEqual(r.passed, true, "\(r.check): \(r.value)") }
        // The logits comparison: 0 for fast against reference of the same Q8_0 file (fp32 activations: equal bit for
        // bit on the CPU), and it sees the quantization error against the unquantized (F32) weights of the same seed.
        let ref = try ModelBundle(path: path, precision: .reference, threads: 2)
        let few = Array(prompts.prefix(3))
        XCTAssertEqual(try DeviceCheck.logitsDifference(bundle.model, reference: ref.model, prompts: few), 0)
        let f32Path = try TinyModel.write(dtype: .f32)
        defer { try? FileManager.default.removeItem(atPath: f32Path) }
        let f32 = try ModelBundle(path: f32Path, precision: .reference, threads: 2)
        let d = try DeviceCheck.logitsDifference(bundle.model, reference: f32.model, prompts: few)
        XCTAssertGreaterThan(d, 1e-5)
        XCTAssertLessThan(d, 0.1)
    }

    // MARK: (c) on a GPU

    func testCUDALogitsMatchTheCPU() throws {
        if let why = Self.unavailable { throw XCTSkip(why) }
        for dtype in [DType.f32, .q8_0, .q4_1] {
            let path = try TinyModel.write(dtype: dtype)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let cpu = try ModelBundle(path: path, precision: .reference, threads: 2)
            let gpu = try ModelBundle(path: path, precision: .reference, threads: 2)
            try gpu.use(.cuda)
            XCTAssertEqual((gpu.model as? DecoderModel)?.device, .cuda)
            let prompts = DeviceCheck.prompts(count: 5, vocabularySize: 97, maxLength: 40)
            let d = try DeviceCheck.logitsDifference(gpu.model, reference: cpu.model, prompts: prompts)
            XCTAssertLessThan(d, 1e-4, "\(dtype.name): fp32 path")
            let a = try DeviceCheck.greedyTokens(gpu, prompts: prompts, tokens: 12)
            let b = try DeviceCheck.greedyTokens(cpu, prompts: prompts, tokens: 12)
            XCTAssertEqual(a, b, dtype.name)
        }
    }

    func testCUDABatchInvarianceBitForBit() throws {
        if let why = Self.unavailable { throw XCTSkip(why) }
        let path = try TinyModel.write(dtype: .q4_1)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let bundle = try ModelBundle(path: path, precision: .fast, threads: 2)
        try bundle.use(.cuda)
        let prompts = DeviceCheck.prompts(count: 24, vocabularySize: 97, maxLength: 40)
        for r in try DeviceCheck.batchInvariance(bundle, prompts: prompts, tokens: 8, batchSizes: [1, 8, 24], chunk: 5) {
            XCTAssertEqual(r.passed, true, "\(r.check): \(r.value)")
        }
    }

    func testCUDAKeepsTheHostCacheForThePrefixCache() throws {
        // Keys and values the GPU computed are copied into the host KVCache: continuing a GPU-filled cache on the CPU
        // gives the CPU's logits (fp32 tolerance), and a CPU-filled cache continues on the GPU (its rows uploaded).
        if let why = Self.unavailable { throw XCTSkip(why) }
        let path = try TinyModel.write(dtype: .f32)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let cpu = try ModelBundle(path: path, precision: .reference, threads: 2)
        let gpu = try ModelBundle(path: path, precision: .reference, threads: 2)
        try gpu.use(.cuda)
        let p = [5, 6, 7, 8, 9, 10, 11]
        func filled(_ b: ModelBundle) throws -> KVCache {
            let c = b.model.makeCache(capacity: 16)
            _ = try b.model.forward([SequenceChunk(cache: c, tokens: p)])
            return c
        }
        let reference = try cpu.model.forward([SequenceChunk(cache: try filled(cpu), tokens: [12])])[0]
        let gpuThenCPU = try cpu.model.forward([SequenceChunk(cache: try filled(gpu), tokens: [12])])[0]
        let cpuThenGPU = try gpu.model.forward([SequenceChunk(cache: try filled(cpu), tokens: [12])])[0]
        let scale = reference.map { abs($0) }.max()!
        for (a, b) in zip(gpuThenCPU, reference) { XCTAssertEqual(a, b, accuracy: 1e-4 * scale) }
        for (a, b) in zip(cpuThenGPU, reference) { XCTAssertEqual(a, b, accuracy: 1e-4 * scale) }
    }
}
