"""The LiteRT interpreter (ai_edge_litert) around a `.tflite` file: what export verification, releases,
`zoo info` and the tests run the files with, as an app would. Needs no TensorFlow."""

import pathlib

import numpy as np


class TFLiteModel:
    """A `.tflite` file run by ai_edge_litert: `predict(images)` -> float probabilities, one image at a time."""

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = pathlib.Path(path)
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise ValueError(f"{path} is empty, not a TFLite model (a copy or download that did not finish?).")
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        except ValueError as e:  # LiteRT's own words do not name the file
            raise ValueError(f"{path} is not a TFLite model LiteRT can read (corrupt or truncated?): {e}") from None
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.input["shape"][1:])

    @property
    def num_classes(self):
        return int(self.output["shape"][-1])

    def invoke(self, image):
        """Run one raw 0-255 image [H, W, C]; returns the probabilities as stored (uint8 for int8)."""
        if np.shape(image)[-1] == 1 and self.input_shape[-1] == 3:  # a greyscale model's file takes RGB
            image = np.repeat(image, 3, axis=-1)  # the grey repeated, as zoo.data.as_rgb (not imported: it brings Keras)
        self.interpreter.set_tensor(self.input["index"], np.asarray(image, self.input["dtype"])[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[0]

    def predict(self, images):
        scale, zero_point = self.output["quantization"]
        outputs = np.stack([self.invoke(image) for image in images]).astype("float64")
        return (outputs - zero_point) * scale if scale else outputs

    def spec(self):
        """Input and output tensors as an app needs them: shape, dtype, value range, quantization."""

        def describe(detail, value_range):
            scale, zero_point = detail["quantization"]
            return {
                "name": detail["name"],
                "shape": [int(d) for d in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name,
                "value_range": value_range,
                "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
            }

        return {"input": describe(self.input, [0, 255]), "output": describe(self.output, [0, 1])}
