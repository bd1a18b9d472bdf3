import ArgumentParser
import CausalLM

/// `--device cpu|cuda` of the commands that run a model (docs/cuda.md).
enum DeviceArgument: String, ExpressibleByArgument, CaseIterable {
    case cpu, cuda
    var value: ComputeDevice { self == .cuda ? .cuda : .cpu }

    static let help = "cpu (default) or cuda: one NVIDIA GPU, its driver and NVRTC loaded at run time; decoder models of the LLaMA family (LLaMA, SmolLM2, Qwen2/2.5/3, Gemma 3); no LoRA adapters on cuda (docs/cuda.md). Without a GPU, cuda is an error."
}

struct DeviceOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(DeviceArgument.help)) var device: DeviceArgument = .cpu

    /// Moves `bundle`'s model to the chosen device (nothing for cpu: the model loads on the CPU).
    func apply(_ bundle: ModelBundle) throws {
        if device == .cuda { try bundle.use(.cuda) }
    }

    /// For options the CUDA backend does not take: a clear error naming them.
    func refuse(_ what: String) throws {
        if device == .cuda { throw CausalError.invalidArgument("--device cuda: \(what)") }
    }
}
