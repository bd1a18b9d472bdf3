import Foundation

/// Where a decoder model's forward runs: the CPU backend (the default) or the CUDA backend (one NVIDIA GPU, driver and
/// NVRTC loaded at run time; docs/cuda.md).
public enum ComputeDevice: String, Sendable, CaseIterable {
    case cpu, cuda
}

/// What the CUDA backend stores weights as: `bf16` (the fast path: BF16 and F32 tensors as they are, every other type
/// dequantized to bf16 at upload) or `f32` (every weight fp32: the reference path, `--precision reference`).
public enum CUDAWeightFormat: String, Sendable, CaseIterable {
    case bf16, f32
}

extension DecoderModel {
    /// The device this model's forward runs on.
    public var device: ComputeDevice { backend is CUDABackend ? .cuda : .cpu }

    /// A description of the backend (device name, threads or weight format).
    public var backendName: String { backend.name }

    /// Moves the forward to `device`. CUDA: opens the first GPU and compiles the kernels (throws "no CUDA device: ..."
    /// without a driver or a GPU, "NVRTC not found ..." without NVRTC); weights go to the device at first use, as
    /// `weights` says (default: f32 for a reference-precision model, else bf16). CPU: back to the CPU backend. Caches
    /// made before stay usable on either device (the host copy of keys and values is kept up to date).
    public func use(_ device: ComputeDevice, weights: CUDAWeightFormat? = nil) throws {
        switch device {
        case .cpu:
            if backend is CUDABackend { backend = CPUBackend(pool: pool) }
        case .cuda:
            if KVPrecision.current != .fp32 {
                throw CausalError.invalidArgument("--kv-cache \(KVPrecision.current.rawValue) runs on the CPU only; the CUDA backend keeps keys and values in fp32 (use --kv-cache fp32 with --device cuda)")
            }
            let format = weights ?? (precision == .reference ? .f32 : .bf16)
            let b = try CUDABackend(weights: format == .f32 ? .f32 : .bf16)
            b.hostLayout = (config.kvHeadCount, config.headDim)
            b.layerCount = config.layerCount
            backend = b
        }
    }
}

extension ModelBundle {
    /// Runs this bundle's model on `device` (`DecoderModel.use`). CUDA takes decoder-only models of the LLaMA family
    /// (DecoderConfig); GPT-2, T5 and BERT models run on the CPU only, and asking for CUDA is an error naming the model.
    public func use(_ device: ComputeDevice, weights: CUDAWeightFormat? = nil) throws {
        guard device != .cpu else {
            if let d = model as? DecoderModel { try d.use(.cpu) }
            return
        }
        guard let d = model as? DecoderModel else {
            throw CausalError.invalidArgument("--device \(device.rawValue): \(path) is a \(type(of: model)) model; the CUDA backend runs decoder models of the LLaMA family (LLaMA, SmolLM2, Qwen2/2.5/3, Gemma 3) only")
        }
        try d.use(device, weights: weights)
    }

    /// Checks that a CUDA device can be opened (driver, GPU, NVRTC, kernels) without loading a model: nil when it can,
    /// else the reason ("no CUDA device: ...").
    public static func cudaUnavailableReason() -> String? {
        do { _ = try CUDABackend(weights: .bf16); return nil } catch { return "\(error)" }
    }
}

/// The CUDA backend's run-time pieces, for tests and diagnostics: its kernel source and names, NVRTC and the driver
/// as this process would find them.
public enum CUDARuntime {
    /// The CUDA C++ source of every kernel (compiled by NVRTC when the backend opens).
    public static var kernelSource: String { CUDAKernels.source }
    /// The kernels the backend launches (extern "C" names).
    public static var kernelNames: [String] { CUDAKernels.names }

    /// Where NVRTC was found and its version; throws "NVRTC not found (tried ...)".
    public static func nvrtc() throws -> (path: String, version: String, cubin: Bool) {
        let n = try NVRTC()
        return (n.library.path, n.version, n.nvrtcGetCUBIN != nil)
    }

    /// Compiles `source` with NVRTC for `architecture` (compute_XY: PTX text; sm_XY: a CUBIN image); throws with
    /// NVRTC's log when it does not compile.
    public static func compile(_ source: String, name: String, architecture: String) throws -> (code: [UInt8], isCUBIN: Bool, log: String) {
        let out = try NVRTC().compile(source, name: name, architecture: architecture)
        var bytes = out.code.map { UInt8(bitPattern: $0) }
        if !out.isCUBIN, let end = bytes.firstIndex(of: 0) { bytes.removeSubrange(end...) }   // PTX: drop the terminator
        return (bytes, out.isCUBIN, out.log)
    }

    /// Opens the driver library only (no device); throws "no CUDA device: libcuda.so.1 not found (tried ...)".
    public static func loadDriver() throws -> String { try CUDADriver().library.path }

    /// The backend's fp32 to bf16 conversion (round to nearest even), used for weights uploaded as bf16.
    public static func bf16(_ x: Float) -> UInt16 { CUDABackend.bf16(x) }
}
