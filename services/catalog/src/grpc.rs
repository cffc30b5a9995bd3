//! The catalog's gRPC face: each `CatalogService` method reads what only the request carries
//! (the `accept-language` metadata), calls [`CatalogHandler`] and wraps its answer; errors
//! become statuses through `shopmesh_kit::Error`'s one mapping.

use std::sync::Arc;

use shopmesh_kit::locale;
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_server::CatalogService;
use shopmesh_proto::shopmesh::catalog::v1::{
    Category, CommitStockRequest, CreateCategoryRequest, CreateProductRequest,
    DeleteCategoryRequest, DeleteCategoryResponse, DeleteProductRequest, DeleteProductResponse,
    GetProductRequest, GetProductsForOrderRequest, GetProductsForOrderResponse,
    ListCategoriesRequest, ListCategoriesResponse, ListProductsRequest, ListProductsResponse,
    Product, ReleaseStockRequest, ReserveStockRequest, SearchProductsRequest,
    SearchProductsResponse, StockReservation, UpdateCategoryRequest, UpdateProductRequest,
};
use tonic::{Request, Response, Status};

use crate::handler::CatalogHandler;

/// The handler as a `CatalogService`; the server and the handler's other users (the stock
/// consumer, the product follower, the seed) share one handler.
#[derive(Clone)]
pub struct CatalogApi(pub Arc<CatalogHandler>);

type Answer<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn list_categories(
        &self,
        request: Request<ListCategoriesRequest>,
    ) -> Answer<ListCategoriesResponse> {
        let accepted = locale::accepted(request.metadata());
        Ok(Response::new(self.0.list_categories(&accepted).await?))
    }

    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Answer<ListProductsResponse> {
        let accepted = locale::accepted(request.metadata());
        let listed = self
            .0
            .list_products(request.into_inner(), &accepted)
            .await?;
        Ok(Response::new(listed))
    }

    async fn get_product(&self, request: Request<GetProductRequest>) -> Answer<Product> {
        let accepted = locale::accepted(request.metadata());
        let product = self.0.product(&request.into_inner().id, &accepted).await?;
        Ok(Response::new(product))
    }

    async fn search_products(
        &self,
        request: Request<SearchProductsRequest>,
    ) -> Answer<SearchProductsResponse> {
        let accepted = locale::accepted(request.metadata());
        let found = self
            .0
            .search_products(request.into_inner(), &accepted)
            .await?;
        Ok(Response::new(found))
    }

    async fn create_product(&self, request: Request<CreateProductRequest>) -> Answer<Product> {
        Ok(Response::new(self.0.create(request.into_inner()).await?))
    }

    async fn update_product(&self, request: Request<UpdateProductRequest>) -> Answer<Product> {
        Ok(Response::new(
            self.0.update_product(request.into_inner()).await?,
        ))
    }

    async fn delete_product(
        &self,
        request: Request<DeleteProductRequest>,
    ) -> Answer<DeleteProductResponse> {
        self.0.delete_product(&request.into_inner().id).await?;
        Ok(Response::new(DeleteProductResponse {}))
    }

    async fn create_category(&self, request: Request<CreateCategoryRequest>) -> Answer<Category> {
        Ok(Response::new(
            self.0.create_category_record(request.into_inner()).await?,
        ))
    }

    async fn update_category(&self, request: Request<UpdateCategoryRequest>) -> Answer<Category> {
        Ok(Response::new(
            self.0.update_category(request.into_inner()).await?,
        ))
    }

    async fn delete_category(
        &self,
        request: Request<DeleteCategoryRequest>,
    ) -> Answer<DeleteCategoryResponse> {
        self.0.delete_category(&request.into_inner().id).await?;
        Ok(Response::new(DeleteCategoryResponse {}))
    }

    async fn get_products_for_order(
        &self,
        request: Request<GetProductsForOrderRequest>,
    ) -> Answer<GetProductsForOrderResponse> {
        let accepted = locale::accepted(request.metadata());
        let found = self
            .0
            .products_for_order(request.into_inner().product_ids, &accepted)
            .await?;
        Ok(Response::new(found))
    }

    async fn reserve_stock(
        &self,
        request: Request<ReserveStockRequest>,
    ) -> Answer<StockReservation> {
        Ok(Response::new(
            self.0.reserve_stock(request.into_inner()).await?,
        ))
    }

    async fn release_stock(
        &self,
        request: Request<ReleaseStockRequest>,
    ) -> Answer<StockReservation> {
        Ok(Response::new(
            self.0.release_stock(request.into_inner()).await?,
        ))
    }

    async fn commit_stock(&self, request: Request<CommitStockRequest>) -> Answer<StockReservation> {
        Ok(Response::new(
            self.0.commit_stock(&request.into_inner().order_id).await?,
        ))
    }
}
