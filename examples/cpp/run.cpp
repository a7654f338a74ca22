// torchport-run: run a model exported by `torchport export` with libtorch, no Python.
//
//   torchport-run MODEL INPUTS
//
// MODEL is an AOTInductor package (`--to aoti`: model_aoti.pt2) or a TorchScript file
// (`--to torchscript`: model.pt), taken out of the exported .tpa with `unzip`. INPUTS is
// a tensors file (`torchport export --write-inputs`): the model's positional inputs, each
//
//   tensor NAME DTYPE DIM0 DIM1 ...
//   VALUE VALUE ...            (row-major, whitespace-separated, on any number of lines)
//
// with DTYPE float32, float64, int32, int64 or bool. The outputs are printed to stdout in
// the same format, named output_0, output_1, ...

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Named {
  std::string name;
  at::Tensor tensor;
};

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "int32") return at::kInt;
  if (name == "int64") return at::kLong;
  if (name == "bool") return at::kBool;
  throw std::runtime_error("unsupported dtype '" + name + "'");
}

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    default: throw std::runtime_error("unsupported output dtype");
  }
}

std::vector<Named> read_tensors(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<Named> tensors;
  std::string word;
  while (in >> word) {
    if (word == "#") {  // a comment runs to the end of its line
      std::getline(in, word);
      continue;
    }
    if (word != "tensor") throw std::runtime_error("expected 'tensor', got '" + word + "'");
    std::string header;
    std::getline(in, header);
    std::istringstream fields(header);
    Named named;
    std::string dtype;
    fields >> named.name >> dtype;
    std::vector<int64_t> shape;
    for (int64_t dim; fields >> dim;) shape.push_back(dim);
    auto values = at::empty(shape, at::kDouble);
    auto* data = values.data_ptr<double>();
    for (int64_t i = 0; i < values.numel(); ++i) {
      if (!(in >> data[i])) throw std::runtime_error("too few values for " + named.name);
    }
    named.tensor = values.to(parse_dtype(dtype));
    tensors.push_back(std::move(named));
  }
  return tensors;
}

void print_tensor(const std::string& name, const at::Tensor& value) {
  auto tensor = value.contiguous().cpu();
  std::cout << "tensor " << name << " " << dtype_name(tensor.scalar_type());
  for (auto dim : tensor.sizes()) std::cout << " " << dim;
  std::cout << "\n";
  auto flat = tensor.to(at::kDouble).reshape({-1});
  auto* data = flat.data_ptr<double>();
  std::cout << std::setprecision(9);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    std::cout << data[i] << ((i + 1) % 8 == 0 || i + 1 == flat.numel() ? "\n" : " ");
  }
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<at::Tensor> run(const std::string& model, const std::vector<at::Tensor>& inputs) {
  c10::InferenceMode guard;
  if (ends_with(model, ".pt2")) {
    torch::inductor::AOTIModelPackageLoader loader(model);
    return loader.run(inputs);
  }
  auto module = torch::jit::load(model);
  module.eval();
  std::vector<c10::IValue> args(inputs.begin(), inputs.end());
  auto result = module.forward(args);
  if (result.isTensor()) return {result.toTensor()};
  std::vector<at::Tensor> outputs;
  for (const auto& item : result.toTupleRef().elements()) outputs.push_back(item.toTensor());
  return outputs;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: torchport-run MODEL(.pt2 AOTInductor | .pt TorchScript) INPUTS\n";
    return 2;
  }
  try {
    std::vector<at::Tensor> inputs;
    for (auto& named : read_tensors(argv[2])) inputs.push_back(named.tensor);
    auto outputs = run(argv[1], inputs);
    for (size_t i = 0; i < outputs.size(); ++i) {
      print_tensor("output_" + std::to_string(i), outputs[i]);
    }
  } catch (const std::exception& error) {
    std::string message = error.what();
    std::cerr << "error: " << message.substr(0, message.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
