// A Next.js image loader for s3-image-pipeline's sizes on demand (docs/litestar-plugin.md).
//
//   // next.config.js
//   module.exports = { images: { loader: "custom", loaderFile: "./image-pipeline-loader.js" } };
//   // or per image
//   <Image loader={imagePipelineLoader} src={image.width_urls.template} width={…} height={…} alt="" />
//
// `src` is what the API hands out for an image: its `width_urls.template`
// ("/images/images/<id>/w{width}.{ext}", or the CDN's "https://cdn…/processed/<id>/<stem>/w{width}.{ext}"),
// a width URL ("…/w640", "…/w640.webp"), or the image's base ending with "/" ("…/images/<id>/").
// The URL asks for `width` with the format left to the browser's Accept (AVIF, WebP, else JPEG or
// PNG), unless `src` names one. The API's default ONDEMAND_WIDTHS are Next.js's own deviceSizes and
// imageSizes, so every width Next.js asks for is allowed unsigned; `quality` is the pipeline's.

const WIDTH_LEAF = /\/w\d+(\.(?:jpg|webp|avif|png))?(?=[?#]|$)/;

export default function imagePipelineLoader({ src, width }) {
  if (typeof src !== "string" || src === "") {
    throw new Error("image-pipeline loader: src must be an image's width_urls.template or width URL");
  }
  if (!Number.isInteger(width) || width < 1) {
    throw new Error(`image-pipeline loader: width must be a whole number of pixels, not ${width}`);
  }
  if (src.includes("{width}")) {
    return src.replace("{width}", String(width)).replace(".{ext}", "").replace("{ext}", "");
  }
  if (WIDTH_LEAF.test(src)) {
    return src.replace(WIDTH_LEAF, (_, ext) => `/w${width}${ext || ""}`);
  }
  if (src.endsWith("/")) {
    return `${src}w${width}`;
  }
  throw new Error(`image-pipeline loader: ${src} is neither a width URL template nor a width URL`);
}

export { imagePipelineLoader };
